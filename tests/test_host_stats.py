"""The tracker host's ``stats`` long poll against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fabmurder.config import settings
from fabmurder.feed import GATHER, Feed
from fabmurder.host import stats


@pytest.fixture
def progress() -> Iterator[tuple[str, list[int]]]:
    """A /progress whose seq is 1 on the first ask, 2 on the second and 3 from the third."""
    asked: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(1)
            body = json.dumps({"seq": min(len(asked), 3), "changes": {}, "totals": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/progress", asked
    finally:
        server.shutdown()


def test_a_long_poll_answers_as_soon_as_the_seq_moves(progress: tuple[str, list[int]]) -> None:
    url, asked = progress
    assert stats.follow(url, wait=10, seq=1)["seq"] == 2
    assert len(asked) == 2


def test_a_gathering_poll_answers_with_the_changes_of_its_whole_window(
    progress: tuple[str, list[int]],
) -> None:
    url, asked = progress
    # The seq moved at the second ask; the poll kept asking until its window ended.
    assert stats.follow(url, wait=10, seq=1, gather=0.5)["seq"] == 3
    assert len(asked) >= 3


def test_the_feed_gathers_longer_the_more_peers_are_pending() -> None:
    from invoke import Context

    feed = Feed("http://t/progress/tok", "ab" * 20, {"web1": "r1"})
    s = settings(Context())
    assert "--gather" not in feed.command(s, 5.0, pending=3)
    assert "--gather 0.50" in feed.command(s, 5.0, pending=500)
    assert f"--gather {GATHER:.2f}" in feed.command(s, 5.0, pending=5000)
    # never beyond the poll's own wait
    assert "--gather 0.30" in feed.command(s, 0.3, pending=5000)
