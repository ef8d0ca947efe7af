"""Hostile and broken clients neither crash, stall nor corrupt a live tracker."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from fabmurder.tracker.client import (
    TrackerProcess,
    announce_target,
    compact_peers,
    connect,
    read_response,
)

GOOD_HASH = bytes.fromhex("ab" * 20)


def pid(n: int) -> bytes:
    return b"-FM0001-" + n.to_bytes(12, "big")


@pytest.fixture(scope="module")
def tracker() -> Iterator[TrackerProcess]:
    proc = TrackerProcess.start(
        [
            "--header-timeout",
            "1",
            "--idle-timeout",
            "2",
            "--max-swarms",
            "4",
            "--max-peers-per-swarm",
            "6",
            "--max-connections",
            "40",
        ]
    )
    # A known swarm, checked after every hostile request.
    proc.get(announce_target(GOOD_HASH, pid(1), 7001, 0))
    yield proc
    assert proc.stop() == 0


def still_serves(t: TrackerProcess) -> None:
    """Check that the tracker answers a valid announce correctly."""
    assert t.alive()
    reply = t.get(announce_target(GOOD_HASH, pid(2), 7002, 10)).bdecode()
    assert compact_peers(reply[b"peers"]) == [("127.0.0.1", 7001)]  # type: ignore[arg-type]
    assert reply[b"complete"] == 1 and reply[b"incomplete"] == 1


def raw(t: TrackerProcess, data: bytes) -> tuple[int, bool]:
    """Send raw bytes; return the reply's status and whether the tracker then closed."""
    with connect(t.host, t.port, timeout=10.0) as sock:
        sock.sendall(data)
        response, rest = read_response(sock)
        if rest:
            return response.status, False
        sock.settimeout(0.5)
        try:
            return response.status, sock.recv(1) == b""
        except TimeoutError:
            return response.status, False


H = "info_hash=" + "%ab" * 20
P = "peer_id=" + "%01" * 20


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", b"missing info_hash"),
        (f"{H}&port=1&left=0", b"missing peer_id"),
        (f"{H}&{P}&left=0", b"missing port"),
        (f"info_hash=abc&{P}&port=1&left=0", b"invalid info_hash"),
        (f"info_hash={'%ab' * 21}&{P}&port=1&left=0", b"invalid info_hash"),
        (f"{H}&peer_id=xyz&port=1&left=0", b"invalid peer_id"),
        (f"{H}&peer_id={'a' * 21}&port=1&left=0", b"invalid peer_id"),
        (f"{H}&{P}&port=1&left=0&junk=%G1", b"bad percent-encoding"),
        (f"{H}&{P}&port=1&left=%", b"bad percent-encoding"),
        (f"{H}&{P}&port=abc&left=0", b"invalid port"),
        (f"{H}&{P}&port=-5&left=0", b"invalid port"),
        (f"{H}&{P}&port=0&left=0", b"invalid port"),
        (f"{H}&{P}&port=1&left=-1", b"invalid left"),
        (f"{H}&{P}&port=1&left=1e9", b"invalid left"),
        (f"{H}&{P}&port=1&left=0&uploaded=x", b"invalid uploaded"),
        (f"{H}&{P}&port=1&left=0&downloaded=-1", b"invalid downloaded"),
        (f"{H}&{P}&port=1&left=0&numwant=lots", b"invalid numwant"),
        (f"{H}&{P}&port=1&left=0&event=exploded", b"invalid event"),
        (f"{H}&{P}&port=1&left=0&ip=999.1.1.1", b"invalid ip"),
    ],
)
def test_malformed_announces_get_a_failure_reason(
    tracker: TrackerProcess, query: str, reason: bytes
) -> None:
    response = tracker.get(f"/announce?{query}")
    assert response.status == 200
    assert response.bdecode() == {b"failure reason": reason}
    still_serves(tracker)


def test_huge_numwant_is_capped_not_refused(tracker: TrackerProcess) -> None:
    reply = tracker.get(announce_target(GOOD_HASH, pid(3), 7003, 5, numwant="9" * 20)).bdecode()
    assert len(compact_peers(reply[b"peers"])) == 2  # type: ignore[arg-type]
    tracker.get(announce_target(GOOD_HASH, pid(3), 7003, 5, event="stopped"))
    still_serves(tracker)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /announce?" + b"x=1&" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /stats HTTP/1.1\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n", 431),
        (b"GET /stats HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", 431),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST /announce HTTP/1.1\r\n\r\n", 405),
        (b"PUT /stats HTTP/1.1\r\n\r\n", 405),
        (b"DELETE /stats HTTP/1.1\r\n\r\n", 405),
        (b"HEAD /stats HTTP/1.1\r\n\r\n", 405),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", 405),
        (b"GET /stats HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /stats\r\n\r\n", 400),
        (b"GET /stats SPDY/3\r\n\r\n", 400),
        (b"\x00\xff\x16\x03\x01garbage\r\n\r\n", 400),
        (b"GET /stats HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", 404),
        (b"GET /announce.php HTTP/1.1\r\n\r\n", 404),
        (b"GET \xff\xfe HTTP/1.1\r\n\r\n", 404),
        (b"GET http://evil/stats HTTP/1.1\r\n\r\n", 200),
    ],
)
def test_bad_http_gets_a_4xx_and_broken_requests_a_closed_connection(
    tracker: TrackerProcess, request_bytes: bytes, status: int
) -> None:
    got, closed = raw(tracker, request_bytes)
    assert got == status
    # a broken request leaves the stream unparseable: the tracker hangs up
    assert closed == (status not in (200, 404))
    still_serves(tracker)


@pytest.mark.parametrize(
    "first_bytes", [b"", b"GET /stats HTTP/1.1\r\n", b"G"], ids=["nothing", "no-end", "one-byte"]
)
def test_slowloris_connections_are_closed_after_the_header_timeout(
    tracker: TrackerProcess, first_bytes: bytes
) -> None:
    # The header timeout (1 s) must fire; the sockets' own 30 s only bounds a hang.
    socks = [connect(tracker.host, tracker.port, timeout=30.0) for _ in range(10)]
    try:
        for sock in socks:
            sock.sendall(first_bytes)
        still_serves(tracker)  # not stalled while they hang
        for sock in socks:
            assert sock.recv(1) == b""  # the tracker closed it, having sent nothing
    finally:
        for sock in socks:
            sock.close()
    still_serves(tracker)


def test_a_trickling_client_cannot_hold_a_connection_past_the_timeout(
    tracker: TrackerProcess,
) -> None:
    # A byte every 0.2 s keeps the head coming for about 26 s, many header
    # timeouts (1 s): it is closed part-way only if the timeout counts from the
    # start of the head rather than from the last byte.
    with connect(tracker.host, tracker.port) as sock:
        closed = False
        for byte in b"GET /stats HTTP/1.1\r\nX-Slow: " + b"z" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
    still_serves(tracker)


def test_idle_keep_alive_connections_are_closed(tracker: TrackerProcess) -> None:
    # The idle timeout (2 s) must fire; the socket's own 30 s only bounds a hang.
    with connect(tracker.host, tracker.port, timeout=30.0) as sock:
        for _ in range(2):  # kept alive: a second request on the link is served
            sock.sendall(b"GET /stats HTTP/1.1\r\n\r\n")
            response, rest = read_response(sock)
            assert response.status == 200 and rest == b""
        assert sock.recv(1) == b""  # then, left idle, the link is closed


def test_connections_beyond_the_cap_get_503_and_others_still_work(
    tracker: TrackerProcess,
) -> None:
    socks = [connect(tracker.host, tracker.port) for _ in range(45)]
    try:
        refused = 0
        for sock in socks:
            sock.settimeout(0.5)
            try:
                data = sock.recv(100)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.1 503"):
                refused += 1
        assert refused >= 5
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            still_serves(tracker)
            break
        except (AssertionError, ConnectionError, OSError):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_swarm_and_peer_caps_keep_memory_bounded(tracker: TrackerProcess) -> None:
    reasons = set()
    for n in range(10):
        reply = tracker.get(announce_target(os.urandom(20), pid(n), 7100 + n, 5)).bdecode()
        reasons.add(reply.get(b"failure reason"))
    assert b"tracker is full: too many swarms" in reasons
    for n in range(10, 20):
        reply = tracker.get(announce_target(GOOD_HASH, pid(n), 7100 + n, 5)).bdecode()
        reasons.add(reply.get(b"failure reason"))
    assert b"swarm is full" in reasons
    stats = json.loads(tracker.get("/stats").body)["swarms"]
    assert len(stats) <= 4 and all(s["peers"] <= 6 for s in stats.values())
    for n in range(10, 20):
        tracker.get(announce_target(GOOD_HASH, pid(n), 7100 + n, 5, event="stopped"))
    still_serves(tracker)


def test_a_client_that_pipelines_without_reading_does_not_stall_others(
    tracker: TrackerProcess,
) -> None:
    with socket.create_connection((tracker.host, tracker.port)) as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.settimeout(0.5)
        request = b"GET /stats HTTP/1.1\r\n\r\n"
        sent = 0
        try:
            for _ in range(2000):
                sent += greedy.send(request * 50)
        except (TimeoutError, BlockingIOError):
            pass
        still_serves(tracker)
    still_serves(tracker)


def test_at_the_cap_an_idle_kept_alive_connection_makes_room_for_a_new_client(
    tracker: TrackerProcess,
) -> None:
    # 40 reporters' links, each answered once and kept alive (the fixture's cap is 40)
    idle = [connect(tracker.host, tracker.port, timeout=10.0) for _ in range(40)]
    try:
        for sock in idle:
            sock.sendall(b"GET /stats HTTP/1.1\r\n\r\n")
            response, rest = read_response(sock)
            assert response.status == 200 and rest == b""
        # the seeder's announce still gets in, where it got 503 before
        status, _closed = raw(tracker, b"GET /stats HTTP/1.1\r\n\r\n")
        assert status == 200
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed >= 1  # the room came from an idle link, which its client reopens
    finally:
        for sock in idle:
            sock.close()
    still_serves(tracker)
