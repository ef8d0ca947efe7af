"""Serve one client connection: a minimal HTTP/1.1 parser for GET requests.

Keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked) and pipelining are
supported; request bodies and methods other than GET are refused. Every
complete request is answered synchronously inside ``data_received`` by the
``route`` callable, so replies leave in request order and nothing waits on
I/O while the tracker's state changes. A request head is at most
``MAX_HEAD`` bytes; timeouts are enforced by the server's reaper, which
reads :attr:`Connection.started`. :class:`Registry` holds the open
connections and caps them in all and per client address, so that one noisy
host cannot take every slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_HEAD = 8192
STATUS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
PLAIN = b"text/plain"
JSON = b"application/json"

Reply = tuple[int, bytes, bytes]  # status, content type, body


class Registry:
    """The open connections, capped in all and per client address."""

    __slots__ = ("open", "per_ip", "max_total", "max_per_ip", "refused", "evicted")

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.open: set[Connection] = set()
        self.per_ip: dict[str, int] = {}
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        #: connections refused at a cap since the start
        self.refused = 0
        #: idle kept-alive connections closed to admit a new one at the total cap
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, conn: Connection) -> bytes | None:
        """Register ``conn``; return why it is refused instead, when a cap is reached.

        At the total cap, an idle kept-alive connection (one that was
        answered and has sent nothing since) is closed to make room, and
        its client reconnects for its next request, as HTTP clients do; only
        when every open connection is mid-request is the new one refused.
        Otherwise 5,000 reporting peers' kept-alive connections held the
        4,096 places, and the seeder's announce got 503 (a deploy to 5,000
        simulated peers: none of them started).
        """
        if len(self.open) >= self.max_total and not self._evict_idle():
            self.refused += 1
            return b"too many connections\n"
        count = self.per_ip.get(conn.ip, 0)
        if count >= self.max_per_ip:
            self.refused += 1
            return b"too many connections from your address\n"
        self.per_ip[conn.ip] = count + 1
        self.open.add(conn)
        return None

    def _evict_idle(self) -> bool:
        """Close one idle kept-alive connection; return False when none is idle."""
        for other in self.open:
            if other.served and not other.buf and not other.closing and other.transport:
                other.closing = True
                self.forget(other)
                self.evicted += 1
                other.transport.close()
                return True
        return False

    def forget(self, conn: Connection) -> None:
        """Drop ``conn`` (closed, reaped or lost); idempotent."""
        if conn in self.open:
            self.open.discard(conn)
            left = self.per_ip[conn.ip] - 1
            if left:
                self.per_ip[conn.ip] = left
            else:
                del self.per_ip[conn.ip]


def response(status: int, ctype: bytes, body: bytes, keep_alive: bool) -> bytes:
    """Format one whole HTTP/1.1 response."""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        STATUS[status],
        ctype,
        len(body),
        b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n",
        body,
    )


class Connection(asyncio.Protocol):
    """One client connection: parse request heads, answer them in order."""

    __slots__ = (
        "route",
        "registry",
        "transport",
        "ip",
        "buf",
        "started",
        "served",
        "paused",
        "closing",
        "erred",
    )

    def __init__(self, route: Callable[[bytes, str], Reply], registry: Registry) -> None:
        self.route = route
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.buf = b""
        self.started = time.monotonic()
        self.served = 0
        self.paused = False
        self.closing = False
        #: the last reply was an error (4xx/5xx): the reaper gives it less idle time
        self.erred = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection, or refuse it when the cap is reached."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        self.ip = ip[7:] if ip.startswith("::ffff:") else ip
        refused = self.registry.admit(self)
        if refused is not None:
            self.closing = True
            transport.write(response(503, PLAIN, refused, False))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.registry.forget(self)

    def pause_writing(self) -> None:
        """Stop reading while the client does not read its replies."""
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """Read again and answer requests already buffered."""
        self.paused = False
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self._process()

    def data_received(self, data: bytes) -> None:
        """Buffer bytes and answer every complete request."""
        if self.closing:
            return
        if not self.buf:
            self.started = time.monotonic()
        self.buf += data
        self._process()

    def _fail(self, status: int, text: bytes) -> None:
        # Half-close and drain what the client still sends, so the kernel does
        # not answer unread bytes with a reset that would destroy the reply;
        # the reaper closes the connection if the client does not.
        assert self.transport is not None
        self.closing = True
        self.buf = b""
        self.started = time.monotonic()
        self.transport.write(response(status, PLAIN, text, False))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _process(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.buf and not self.paused and not self.closing:
            buf = self.buf
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    if buf.find(b"\r\n", 0, MAX_HEAD) < 0:
                        self._fail(414, b"request line too long\n")
                    else:
                        self._fail(431, b"request head too long\n")
                return
            head = buf[:end]
            self.buf = buf[end + 4 :]
            self.started = time.monotonic()
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self._fail(400, b"bad request line\n")
                return
            method, target, version = parts
            keep_alive = version != b"HTTP/1.0"
            if line_end >= 0:
                for line in head[line_end + 2 :].split(b"\r\n"):
                    name, sep, value = line.partition(b":")
                    if not sep:
                        self._fail(400, b"bad header\n")
                        return
                    name = name.strip().lower()
                    if name == b"connection":
                        token = value.strip().lower()
                        if token == b"close":
                            keep_alive = False
                        elif token == b"keep-alive":
                            keep_alive = True
                    elif (name == b"content-length" and value.strip() != b"0") or (
                        name == b"transfer-encoding"
                    ):
                        self._fail(400, b"request bodies are not accepted\n")
                        return
            if method != b"GET":
                self._fail(405, b"only GET is served\n")
                return
            if target.startswith(b"http://"):
                slash = target.find(b"/", 7)
                target = target[slash:] if slash >= 0 else b"/"
            status, ctype, body = self.route(target, self.ip)
            self.served += 1
            self.erred = status >= 400
            transport.write(response(status, ctype, body, keep_alive))
            if not keep_alive:
                self.closing = True
                transport.close()
                return
