"""Random requests thrown at a live tracker leave it serving valid announces correctly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabmurder.tracker.client import TrackerProcess, announce_target, compact_peers, connect

EXAMPLES = 400
GOOD_HASH = bytes.fromhex("cd" * 20)
SEEDER = b"-FM0001-seederseeder"
ASKER = b"-FM0001-askeraskerXX"
PARAMS = [
    "info_hash",
    "peer_id",
    "port",
    "uploaded",
    "downloaded",
    "left",
    "event",
    "numwant",
    "compact",
    "no_peer_id",
    "ip",
    "key",
]


@pytest.fixture(scope="module")
def tracker() -> Iterator[TrackerProcess]:
    proc = TrackerProcess.start(["--header-timeout", "2", "--max-swarms", "50"])
    proc.get(announce_target(GOOD_HASH, SEEDER, 7001, 0))
    yield proc
    assert proc.stop() == 0


numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "-0", "1e3", "0x10", " 1", "１"]),
)
raw_values = st.one_of(
    st.binary(max_size=40).map(lambda b: quote_from_bytes(b, safe="")),
    st.binary(min_size=20, max_size=20).map(lambda b: quote_from_bytes(b, safe="")),
    st.text(max_size=30).map(lambda t: t.replace("&", "").replace(" ", "")),
    numbers,
    st.sampled_from(["%", "%g", "%4", "%%", "started", "stopped", "completed", "0", "1"]),
)
pairs = st.lists(
    st.tuples(st.one_of(st.sampled_from(PARAMS), st.text(max_size=10)), raw_values),
    max_size=14,
)
paths = st.one_of(
    st.sampled_from(["/announce", "/scrape", "/stats", "/", "", "*", "/announce/x"]),
    st.text(max_size=30).map(lambda t: "/" + t.replace(" ", "")),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Draw a mostly-HTTP request (sometimes plain garbage)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind <= 3:
        # A valid announce with some parameters dropped or replaced.
        # Other swarms than GOOD_HASH, whose exact reply is checked after each case.
        info_hash = draw(st.sampled_from([bytes(20), b"\xff" * 20, b"%" * 20]))
        params = {
            "info_hash": quote_from_bytes(info_hash, safe=""),
            "peer_id": quote_from_bytes(draw(st.binary(min_size=20, max_size=20)), safe=""),
            "port": "7100",
            "uploaded": "0",
            "downloaded": "0",
            "left": "5",
        }
        for name in draw(st.lists(st.sampled_from(sorted(params)), max_size=2)):
            params.pop(name, None)
        params.update(draw(st.dictionaries(st.sampled_from(PARAMS), raw_values, max_size=3)))
        target = "/announce?" + "&".join(f"{k}={v}" for k, v in params.items())
        return f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT", "get", "G E T"]))
    query = "&".join(f"{k}={v}" for k, v in draw(pairs))
    target = draw(paths) + ("?" + query if query or draw(st.booleans()) else "")
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "HTTP/1.1 extra"]))
    headers = draw(
        st.lists(
            st.sampled_from(
                [
                    "Host: x",
                    "Connection: close",
                    "Connection: keep-alive",
                    "Content-Length: 5",
                    "Content-Length: 0",
                    "Transfer-Encoding: chunked",
                    "X-Junk: " + "j" * 100,
                    "no colon",
                    ": empty name",
                ]
            ),
            max_size=5,
        )
    )
    head = " ".join(p for p in (method, target, version) if p)
    text = "\r\n".join([head, *headers]) + "\r\n\r\n"
    tail = draw(st.binary(max_size=20))
    return text.encode("utf-8", "surrogateescape") + tail


def exchange(t: TrackerProcess, data: bytes) -> bytes:
    """Send ``data``, half-close, and read everything until the tracker hangs up."""
    with connect(t.host, t.port, timeout=10.0) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def check_valid_announce(t: TrackerProcess) -> None:
    assert t.alive()
    reply = t.get(announce_target(GOOD_HASH, ASKER, 7002, 10)).bdecode()
    assert compact_peers(reply[b"peers"]) == [("127.0.0.1", 7001)]  # type: ignore[arg-type]
    assert reply[b"complete"] == 1 and reply[b"incomplete"] == 1
    assert reply[b"interval"] == 1800


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=requests())
def test_random_requests_never_break_the_tracker(tracker: TrackerProcess, data: bytes) -> None:
    reply = exchange(tracker, data)
    if reply:
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 "), reply[:100]
        status = int(status_line.split()[1])
        assert status in (200, 400, 404, 405, 414, 431)
        if status == 200 and data.startswith(b"GET /announce?"):
            body = reply.split(b"\r\n\r\n", 1)[1]
            length = int(reply.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            assert isinstance(bencodepy.decode(body[:length]), dict)
    check_valid_announce(tracker)
