"""One noisy host cannot lock the tracker out, and a peer cannot be moved by its peer id alone.

Each client below speaks from its own loopback address (127.0.0.0/8 is all
this machine's), as each fleet host would from its own address.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from fabmurder.testing.proc import wait_until
from fabmurder.tracker.client import (
    Response,
    TrackerProcess,
    announce_target,
    compact_peers,
    connect,
    read_response,
)

HASH = bytes.fromhex("cd" * 20)


def pid(n: int) -> bytes:
    return b"-FM0001-" + n.to_bytes(12, "big")


def request(sock: socket.socket, target: str) -> Response:
    """Send one keep-alive GET on ``sock`` and read its reply."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    response, rest = read_response(sock)
    assert rest == b""
    return response


def is_closed(sock: socket.socket) -> bool:
    """Tell whether the tracker has closed ``sock`` (without waiting for long)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def tracker() -> Iterator[TrackerProcess]:
    """A tracker with its default caps and timeouts."""
    proc = TrackerProcess.start()
    yield proc
    assert proc.stop() == 0


def test_one_address_holding_every_connection_it_can_open_locks_nobody_else_out(
    tracker: TrackerProcess,
) -> None:
    with ExitStack() as stack:
        held = 0
        refusal = None
        # Open idle connections from one address until the tracker refuses one.
        for _ in range(5000):
            sock = stack.enter_context(connect(tracker.host, tracker.port, source="127.0.9.9"))
            sock.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: t\r\n\r\n")
            response, _ = read_response(sock)
            if response.status == 503:
                refusal = response
                break
            assert response.status == 404
            held += 1
        assert refusal is not None, "one address opened 5000 connections"
        assert b"from your address" in refusal.body
        # Far below the global cap (4096): the cap that fired is the per-address one.
        assert held == 256
        for n in range(20):
            reply = tracker.get(
                announce_target(HASH, pid(n), 7000 + n, 5), source=f"127.0.10.{n + 1}"
            ).bdecode()
            assert b"failure reason" not in reply
            assert reply[b"incomplete"] == n + 1
    metrics = tracker.get("/metrics").body.decode()
    assert re.search(r"^fabmurder_tracker_connections_refused_total [1-9]", metrics, re.M)


def test_an_idle_connection_after_an_error_is_closed_long_before_an_idle_good_one() -> None:
    proc = TrackerProcess.start(["--idle-timeout", "60", "--error-idle-timeout", "1"])
    try:
        with (
            connect(proc.host, proc.port, source="127.0.11.1") as good,
            connect(proc.host, proc.port, source="127.0.11.2") as bad,
        ):
            assert request(good, "/stats").status == 200
            assert request(bad, "/announce/not-a-token").status == 404
            # The reaper runs every second: the errored link goes within a few.
            assert wait_until(lambda: is_closed(bad), 15, "the errored connection to close")
            assert not is_closed(good)
            assert request(good, "/stats").status == 200
    finally:
        assert proc.stop() == 0


def test_the_peers_of_one_address_in_a_swarm_are_capped() -> None:
    proc = TrackerProcess.start(["--max-peers-per-ip", "3"])
    try:
        for n in range(3):
            reply = proc.get(announce_target(HASH, pid(n), 7000 + n, 5), "127.0.12.1").bdecode()
            assert b"failure reason" not in reply
        refused = proc.get(announce_target(HASH, pid(3), 7003, 5), "127.0.12.1").bdecode()
        assert refused[b"failure reason"] == b"too many peers from this address in the swarm"
        other = proc.get(announce_target(HASH, pid(4), 7004, 5), "127.0.12.2").bdecode()
        assert b"failure reason" not in other
        stats = json.loads(proc.get("/stats").body)["swarms"][HASH.hex()]
        assert stats["peers"] == 4
        # A peer of the full address that leaves makes room for another.
        proc.get(announce_target(HASH, pid(0), 7000, 5, event="stopped"), "127.0.12.1")
        again = proc.get(announce_target(HASH, pid(3), 7003, 5), "127.0.12.1").bdecode()
        assert b"failure reason" not in again
    finally:
        assert proc.stop() == 0


def test_a_peer_cannot_be_stopped_or_moved_without_its_key(tracker: TrackerProcess) -> None:
    addr = "127.0.13.1"
    first = announce_target(HASH, pid(1), 7001, 5, key="a1b2c3")
    assert b"failure reason" not in tracker.get(first, addr).bdecode()
    for forged in (
        announce_target(HASH, pid(1), 7001, 5, event="stopped"),
        announce_target(HASH, pid(1), 7001, 5, event="stopped", key="wrong"),
        announce_target(HASH, pid(1), 7999, 0, key="wrong"),
    ):
        reply = tracker.get(forged, addr).bdecode()
        assert reply[b"failure reason"] == b"peer_id is in use by another peer"
    watcher = tracker.get(announce_target(HASH, pid(2), 7002, 5), "127.0.13.2").bdecode()
    assert compact_peers(watcher[b"peers"]) == [(addr, 7001)]  # type: ignore[arg-type]
    # With its key, the peer itself still leaves.
    tracker.get(announce_target(HASH, pid(1), 7001, 5, event="stopped", key="a1b2c3"), addr)
    stats = json.loads(tracker.get("/stats").body)["swarms"][HASH.hex()]
    assert stats["peers"] == 1


SAMPLE = re.compile(r"^(fabmurder_tracker_[a-z_]+) (\d+)$")


def metrics_of(response: Response) -> dict[str, int]:
    """Parse a Prometheus text body strictly: every line a comment or a sample."""
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[str, int] = {}
    typed: set[str] = set()
    for line in response.body.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge")
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        assert match.group(1) in typed, f"{match.group(1)} has no TYPE line before it"
        values[match.group(1)] = int(match.group(2))
    return values


def test_metrics_count_announces_scrapes_failures_and_peers_under_the_token(
    tmp_path: Path,
) -> None:
    # the swarm is served under its deploy token only; the tracker token opens /metrics
    allow = tmp_path / "tracker.allow"
    added = subprocess.run(
        [sys.executable, "-m", "fabmurder", "allow", "--file", str(allow),
         "--add", HASH.hex(), "--token", "d3ploy"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    proc = TrackerProcess.start(["--allow-file", str(allow), "--token", "t0ken"])
    try:
        assert proc.get("/metrics").status == 404
        before = metrics_of(proc.get("/metrics/t0ken"))
        assert before["fabmurder_tracker_announces_total"] == 0
        assert before["fabmurder_tracker_peers"] == 0
        proc.get(announce_target(HASH, pid(1), 7001, 0, path="/announce/d3ploy"), "127.0.14.1")
        proc.get(announce_target(HASH, pid(2), 7002, 9, path="/announce/d3ploy"), "127.0.14.2")
        proc.get("/announce/d3ploy?info_hash=short", "127.0.14.3")
        proc.get("/scrape/d3ploy", "127.0.14.3")
        report = f"/report/d3ploy?info_hash={quote_from_bytes(HASH)}&id=a1&state=downloading"
        assert proc.get(report, "127.0.14.1").status == 200
        proc.get("/nowhere", "127.0.14.3")
        after = metrics_of(proc.get("/metrics/t0ken"))
        assert after["fabmurder_tracker_announces_total"] == 2
        assert after["fabmurder_tracker_scrapes_total"] == 1
        assert after["fabmurder_tracker_reports_total"] == 1
        assert after["fabmurder_tracker_failures_total"] == 1
        assert after["fabmurder_tracker_not_found_total"] >= 2  # /metrics and /nowhere
        assert after["fabmurder_tracker_swarms"] == 1
        assert after["fabmurder_tracker_peers"] == 2
        assert after["fabmurder_tracker_seeders"] == 1
        assert after["fabmurder_tracker_leechers"] == 1
        assert after["fabmurder_tracker_connections"] >= 1  # this request's own
    finally:
        assert proc.stop() == 0
