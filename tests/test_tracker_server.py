"""The tracker as a live program: real HTTP over real loopback sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from fabmurder.tracker.client import (
    TrackerProcess,
    announce_target,
    compact_peers,
    connect,
    read_response,
)

HASH = bytes.fromhex("11" * 20)


def pid(n: int) -> bytes:
    return b"-FM0001-" + n.to_bytes(12, "big")


@pytest.fixture(scope="module")
def tracker() -> Iterator[TrackerProcess]:
    proc = TrackerProcess.start(["--interval", "60"])
    yield proc
    assert proc.stop() == 0


def fresh_hash() -> bytes:
    return os.urandom(20)


def announce(
    t: TrackerProcess, info_hash: bytes, n: int, left: int, source: str = "127.0.0.1", **kw: object
) -> dict[bytes, object]:
    path = kw.pop("path", "/announce")
    target = announce_target(info_hash, pid(n), 7000 + n, left, path=path, **kw)  # type: ignore[arg-type]
    response = t.get(target, source=source)
    assert response.status == 200
    return response.bdecode()


def test_compact_reply_carries_interval_min_interval_complete_incomplete(
    tracker: TrackerProcess,
) -> None:
    h = fresh_hash()
    announce(tracker, h, 1, 0, event="started")
    reply = announce(tracker, h, 2, 100, event="started")
    assert reply[b"interval"] == 60 and reply[b"min interval"] == 30
    assert reply[b"complete"] == 1 and reply[b"incomplete"] == 1
    assert compact_peers(reply[b"peers"]) == [("127.0.0.1", 7001)]  # type: ignore[arg-type]


def test_dictionary_form_when_compact_is_zero(tracker: TrackerProcess) -> None:
    h = fresh_hash()
    announce(tracker, h, 1, 0)
    reply = announce(tracker, h, 2, 5, compact=0)
    assert reply[b"peers"] == [{b"ip": b"127.0.0.1", b"peer id": pid(1), b"port": 7001}]
    reply = announce(tracker, h, 2, 5, compact=0, no_peer_id=1)
    assert reply[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 7001}]


def test_errors_come_back_as_a_failure_reason(tracker: TrackerProcess) -> None:
    response = tracker.get("/announce?info_hash=short&peer_id=x&port=1&left=0")
    assert response.status == 200
    assert response.bdecode() == {b"failure reason": b"invalid info_hash"}


def test_scrape_one_several_and_all(tracker: TrackerProcess) -> None:
    a, b = fresh_hash(), fresh_hash()
    announce(tracker, a, 1, 0)
    announce(tracker, a, 2, 10)
    announce(tracker, a, 2, 0)
    announce(tracker, b, 3, 10)
    one = tracker.get("/scrape?info_hash=" + "".join(f"%{x:02x}" for x in a)).bdecode()
    assert one == {b"files": {a: {b"complete": 2, b"downloaded": 1, b"incomplete": 0}}}
    both = tracker.get(
        "/scrape?" + "&".join("info_hash=" + "".join(f"%{x:02x}" for x in h) for h in (a, b))
    ).bdecode()
    assert set(both[b"files"]) == {a, b}  # type: ignore[arg-type]
    assert both[b"files"][b] == {b"complete": 0, b"downloaded": 0, b"incomplete": 1}  # type: ignore[index]
    everything = tracker.get("/scrape").bdecode()
    assert {a, b} <= set(everything[b"files"])  # type: ignore[arg-type]


def test_stats_json_has_the_documented_shape(tracker: TrackerProcess) -> None:
    h = fresh_hash()
    announce(tracker, h, 1, 0)
    announce(tracker, h, 2, 300)
    announce(tracker, h, 3, 200)
    announce(tracker, h, 3, 0)  # left reaching 0 counts as a completion
    response = tracker.get("/stats")
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    stats = json.loads(response.body)["swarms"][h.hex()]
    assert stats == {"peers": 3, "seeders": 2, "leechers": 1, "completed": 1, "left": 300}


def test_stopped_removes_the_peer_at_once(tracker: TrackerProcess) -> None:
    h = fresh_hash()
    announce(tracker, h, 1, 0)
    announce(tracker, h, 2, 5)
    announce(tracker, h, 1, 0, event="stopped")
    assert announce(tracker, h, 2, 5)[b"peers"] == b""


def test_numwant_is_capped_at_fifty(tracker: TrackerProcess) -> None:
    h = fresh_hash()
    for n in range(60):
        announce(tracker, h, n, 5)
    reply = announce(tracker, h, 0, 5, numwant=10**12)
    peers = compact_peers(reply[b"peers"])  # type: ignore[arg-type]
    assert len(peers) == 50 and ("127.0.0.1", 7000) not in peers


def test_keep_alive_and_pipelined_requests_are_answered_in_order(tracker: TrackerProcess) -> None:
    h = fresh_hash()
    announce(tracker, h, 1, 0)
    with connect(tracker.host, tracker.port) as sock:
        requests = b"".join(
            f"GET {announce_target(h, pid(n), 7000 + n, 5)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            for n in range(10, 20)
        )
        sock.sendall(requests)
        buf = b""
        for n in range(10, 20):
            response, buf = read_response(sock, buf)
            assert response.headers["connection"] == "keep-alive"
            assert response.bdecode()[b"incomplete"] == n - 9
        sock.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
        response, buf = read_response(sock, buf)
        assert response.headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_many_simultaneous_announces_all_get_answers(tracker: TrackerProcess) -> None:
    h = fresh_hash()
    errors: list[BaseException] = []
    start = threading.Barrier(200)

    def one(n: int) -> None:
        try:
            start.wait(10)
            reply = announce(tracker, h, n, 5, event="started")
            assert b"peers" in reply
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    stats = json.loads(tracker.get("/stats").body)["swarms"][h.hex()]
    assert stats["peers"] == 200 and stats["left"] == 1000


def test_rack_peers_come_first_for_a_swarm_on_two_subnets() -> None:
    tracker = TrackerProcess.start(["--interval", "60", "--numwant-cap", "6"])
    try:
        h = fresh_hash()
        for n in range(1, 4):
            announce(tracker, h, n, 5, source=f"127.0.1.{n}")
        for n in range(10, 30):
            announce(tracker, h, n, 5, source=f"127.0.2.{n}")
        for _ in range(20):
            reply = announce(tracker, h, 1, 5, source="127.0.1.1")
            peers = compact_peers(reply[b"peers"])  # type: ignore[arg-type]
            assert len(peers) == 6
            assert {ip for ip, _ in peers[:2]} == {"127.0.1.2", "127.0.1.3"}
            assert all(ip.startswith("127.0.2.") for ip, _ in peers[2:])
            # the big subnet keeps 2 places for the other rack
            reply = announce(tracker, h, 10, 5, source="127.0.2.10")
            peers = compact_peers(reply[b"peers"])  # type: ignore[arg-type]
            assert all(ip.startswith("127.0.2.") for ip, _ in peers[:4])
            assert all(ip.startswith("127.0.1.") for ip, _ in peers[4:])
    finally:
        assert tracker.stop() == 0


def test_racks_file_puts_two_subnets_in_one_rack(tmp_path: Path) -> None:
    racks = tmp_path / "racks"
    racks.write_text("127.0.1.0/24 a\n127.0.3.0/24 a\n")
    tracker = TrackerProcess.start(["--racks", str(racks), "--numwant-cap", "4"])
    try:
        h = fresh_hash()
        announce(tracker, h, 1, 5, source="127.0.1.1")
        announce(tracker, h, 2, 5, source="127.0.3.2")
        for n in range(10, 20):
            announce(tracker, h, n, 5, source=f"127.0.2.{n}")
        reply = announce(tracker, h, 1, 5, source="127.0.1.1")
        peers = compact_peers(reply[b"peers"])  # type: ignore[arg-type]
        assert peers[0] == ("127.0.3.2", 7002)
    finally:
        assert tracker.stop() == 0


def test_allow_list_refuses_unknown_hashes_and_is_reread_on_change(tmp_path: Path) -> None:
    allow = tmp_path / "tracker.allow"
    allow.write_text(f"# releases\n{HASH.hex()}\n")
    tracker = TrackerProcess.start(["--allow-file", str(allow)])
    try:
        other = bytes.fromhex("22" * 20)
        assert b"failure reason" in announce(tracker, other, 1, 5)
        assert b"peers" in announce(tracker, HASH, 1, 5)
        tmp = tmp_path / "tracker.allow.new"
        tmp.write_text(f"{HASH.hex()}\n{other.hex()}\n")
        tmp.replace(allow)
        assert b"peers" in announce(tracker, other, 1, 5)  # no restart needed
        tmp.write_text(f"{other.hex()}\n")
        tmp.replace(allow)
        deadline = time.monotonic() + 10
        while b"failure reason" not in announce(tracker, HASH, 1, 5):
            assert time.monotonic() < deadline, "removed hash still served"
            time.sleep(0.1)
        assert HASH.hex() not in json.loads(tracker.get("/stats").body)["swarms"]
    finally:
        assert tracker.stop() == 0


def test_the_tracker_token_opens_its_views_only_never_a_swarm() -> None:
    tracker = TrackerProcess.start(["--token", "s3cret"])
    try:
        h = fresh_hash()
        for target in (
            announce_target(h, pid(1), 7001, 5, path="/announce/s3cret"),
            f"/scrape/s3cret?info_hash={quote_from_bytes(h)}",
            "/scrape/s3cret",
            "/announce?info_hash=x",
            "/announce/wrong",
            "/announce/s3cret/extra",
            "/scrape",
            "/stats",
            "/stats/s3cre",
            "/",
        ):
            response = tracker.get(target)
            assert response.status == 404, target
            assert h.hex().encode() not in response.body and h not in response.body
        assert json.loads(tracker.get("/stats/s3cret").body) == {"swarms": {}}
        assert tracker.get("/metrics/s3cret").status == 200
    finally:
        assert tracker.stop() == 0


def test_silent_peers_expire_after_about_two_intervals() -> None:
    tracker = TrackerProcess.start(["--interval", "1"])
    try:
        h = fresh_hash()
        announce(tracker, h, 1, 0)
        announce(tracker, h, 2, 5)
        stats = json.loads(tracker.get("/stats").body)["swarms"]
        assert stats[h.hex()]["peers"] == 2
        deadline = time.monotonic() + 30
        while json.loads(tracker.get("/stats").body)["swarms"][h.hex()]["peers"]:
            assert time.monotonic() < deadline, "peers never expired"
            time.sleep(0.2)
        assert announce(tracker, h, 3, 5)[b"peers"] == b""
    finally:
        assert tracker.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_with_exit_0_and_logs_one_line_at_start_and_stop(signum: int) -> None:
    tracker = TrackerProcess.start([])
    h = fresh_hash()
    for n in range(20):
        announce(tracker, h, n, 5)
    assert tracker.stop(signum) == 0
    assert tracker.wait_log("tracker stopped")
    lines = [line for line in tracker.log if line.strip()]
    assert len(lines) == 2, lines
    assert "listening on" in lines[0] and "20 announces" in lines[1]


def test_refuses_bad_command_lines_with_exit_2(tmp_path: Path) -> None:
    from fabmurder.tracker.server import main

    assert main(["--bind", "127.0.0.1", "--port", "70000"]) == 2
    assert main(["--bind", "127.0.0.1", "--port", "0", "--interval", "0"]) == 2
    assert main(["--bind", "127.0.0.1", "--port", "0", "--header-timeout", "0"]) == 2
    assert main(["--bind", "127.0.0.1", "--port", "0", "--numwant-cap", "0"]) == 2
    assert main(["--bind", "127.0.0.1", "--port", "0", "--token", "a/b"]) == 2
    bad = tmp_path / "racks"
    bad.write_text("not-a-subnet a\n")
    assert main(["--bind", "127.0.0.1", "--port", "0", "--racks", str(bad)]) == 2
    with pytest.raises(SystemExit):
        main(["--port", "1"])


def test_a_port_in_use_exits_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        from fabmurder.tracker.server import main

        assert main(["--bind", "127.0.0.1", "--port", str(port)]) == 1


def test_a_release_registered_with_the_allow_command_is_served_at_once(tmp_path: Path) -> None:
    allow = tmp_path / "tracker.allow"
    tracker = TrackerProcess.start(["--allow-file", str(allow)])
    try:
        h = fresh_hash()
        assert b"failure reason" in announce(tracker, h, 1, 5)
        subprocess.run(
            [sys.executable, "-m", "fabmurder", "allow", "--file", str(allow), "--add", h.hex()],
            check=True,
            capture_output=True,
            timeout=30,
        )
        assert b"peers" in announce(tracker, h, 1, 5)
    finally:
        assert tracker.stop() == 0


def test_a_deploy_token_opens_its_own_swarm_only_and_nothing_once_removed(tmp_path: Path) -> None:
    allow = tmp_path / "tracker.allow"
    other = bytes.fromhex("33" * 20)
    for h, token in ((HASH, "deploy-a"), (other, "deploy-b")):
        added = subprocess.run(
            [sys.executable, "-m", "fabmurder", "allow", "--file", str(allow),
             "--add", h.hex(), "--token", token],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    assert allow.stat().st_mode & 0o077 == 0  # tokens are secrets
    tracker = TrackerProcess.start(["--allow-file", str(allow), "--token", "s3cret"])
    try:
        assert b"peers" in announce(tracker, HASH, 1, 5, path="/announce/deploy-a")
        for target in (
            # the tracker's own token serves no swarm, not even a registered one
            announce_target(HASH, pid(2), 7002, 5, path="/announce/s3cret"),
            f"/scrape/s3cret?info_hash={quote_from_bytes(HASH)}",
            announce_target(HASH, pid(3), 7003, 5, path="/announce/deploy-b"),
            announce_target(other, pid(3), 7003, 5, path="/announce/deploy-a"),
            announce_target(HASH, pid(3), 7003, 5, path="/announce/deploy-a/x"),
            "/announce/deploy-a?info_hash=short",
            "/scrape/deploy-a",
            f"/scrape/deploy-a?info_hash={quote_from_bytes(other)}",
            "/stats/deploy-a",
        ):
            response = tracker.get(target)
            assert response.status == 404, target
            assert other not in response.body and HASH not in response.body
        scrape = tracker.get(f"/scrape/deploy-a?info_hash={quote_from_bytes(HASH)}")
        assert scrape.status == 200 and HASH in scrape.body
        removed = subprocess.run(
            [sys.executable, "-m", "fabmurder", "allow", "--file", str(allow), "--remove",
             HASH.hex()],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert removed.returncode == 0, removed.stderr
        deadline = time.monotonic() + 10
        target = announce_target(HASH, pid(1), 7001, 5, path="/announce/deploy-a")
        while tracker.get(target).status != 404:
            assert time.monotonic() < deadline, "a removed deploy's token still opens its swarm"
            time.sleep(0.1)
    finally:
        assert tracker.stop() == 0
