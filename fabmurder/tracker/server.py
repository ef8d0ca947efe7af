"""Serve the tracker over HTTP/1.1 with asyncio, and its command line.

``python -m fabmurder tracker --bind ADDR --port PORT [--interval S]
[--allow-file PATH] [--token TOKEN] [--racks PATH]`` runs in the foreground
until SIGTERM or SIGINT and then exits 0.

The server is a raw :class:`asyncio.Protocol` with a minimal HTTP/1.1 parser
(GET only, keep-alive and pipelining, no request bodies). Every request is
handled synchronously inside ``data_received``: the swarm state is changed
and the reply computed without an ``await``, so nothing is ever held across
I/O. Hostile clients are bounded: a request head may be at most
``MAX_HEAD`` bytes, a request must arrive within ``--header-timeout``
seconds, idle keep-alive connections are closed, and there is a cap on
connections, swarms and peers per swarm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fabmurder.errors import ConfigError
from fabmurder.host.daemon import notify_ready
from fabmurder.tracker.allow import AllowList
from fabmurder.tracker.protocol import (
    RequestError,
    encode_compact,
    encode_dict_peers,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_scrape,
)
from fabmurder.tracker.racks import RackMap
from fabmurder.tracker.swarm import Limits, Swarms

log = logging.getLogger("fabmurder.tracker")

MAX_HEAD = 8192
_STATUS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
_PLAIN = b"text/plain"
_JSON = b"application/json"

Reply = tuple[int, bytes, bytes]  # status, content type, body
Handler = Callable[[bytes, str], Reply]


@dataclass(slots=True)
class TrackerConfig:
    """Everything the tracker's command line sets."""

    bind: str = "127.0.0.1"
    port: int = 6969
    interval: int = 1800
    allow_file: str | None = None
    token: str | None = None
    racks: str | None = None
    accept_ip_param: bool = False
    max_connections: int = 4096
    header_timeout: float = 5.0
    idle_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)


class Tracker:
    """Route HTTP requests to the swarm state; no I/O happens here."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.limits = config.limits
        racks = RackMap.from_file(config.racks) if config.racks else RackMap({})
        self.swarms = Swarms(self.limits, racks.rack_of, config.accept_ip_param)
        self.allow: AllowList | None = None
        if config.allow_file:
            self.allow = AllowList(config.allow_file)
            self.allow.on_change = self.swarms.keep_only
        suffix = b"/" + config.token.encode() if config.token else b""
        self.routes: dict[bytes, Handler] = {
            b"/announce" + suffix: self.announce,
            b"/scrape" + suffix: self.scrape,
            b"/stats" + suffix: self.stats,
        }

    def route(self, target: bytes, ip: str) -> Reply:
        """Answer one GET request for ``target`` from address ``ip``."""
        path, _, query = target.partition(b"?")
        handler = self.routes.get(path)
        if handler is None:
            return 404, _PLAIN, b"not found\n"
        return handler(query, ip)

    def announce(self, query: bytes, ip: str) -> Reply:
        """Handle ``/announce`` (BEP 3, 23)."""
        limits = self.limits
        try:
            req = parse_announce(query)
            if self.allow is not None and req.info_hash not in self.allow:
                raise RequestError("info_hash is not served by this tracker")
            result = self.swarms.announce(req, ip, time.monotonic())
        except RequestError as exc:
            return 200, _PLAIN, encode_failure(str(exc))
        if req.compact:
            peers = b"".join([p.compact for p in result.peers])
            peers6 = b""
            if len(peers) != 6 * len(result.peers):
                # IPv6 peers (18 bytes each) go in their own list (BEP 7).
                peers = b"".join([p.compact for p in result.peers if len(p.compact) == 6])
                peers6 = b"".join([p.compact for p in result.peers if len(p.compact) != 6])
            body = encode_compact(
                result.complete,
                result.incomplete,
                limits.interval,
                limits.min_interval,
                peers,
                peers6,
            )
        else:
            body = encode_dict_peers(
                result.complete,
                result.incomplete,
                limits.interval,
                limits.min_interval,
                [(p.peer_id, p.ip, p.port) for p in result.peers],
                with_peer_id=not req.no_peer_id,
            )
        return 200, _PLAIN, body

    def scrape(self, query: bytes, ip: str) -> Reply:
        """Handle ``/scrape`` (BEP 48)."""
        try:
            hashes = parse_scrape(query)
        except RequestError as exc:
            return 200, _PLAIN, encode_failure(str(exc))
        if self.allow is not None and hashes:
            hashes = [h for h in hashes if h in self.allow]
            if not hashes:
                return 200, _PLAIN, encode_failure("info_hash is not served by this tracker")
        return 200, _PLAIN, encode_scrape(self.swarms.scrape(hashes))

    def stats(self, query: bytes, ip: str) -> Reply:
        """Handle ``/stats``: JSON per swarm for the controller's progress bar."""
        body = json.dumps({"swarms": self.swarms.stats()}, sort_keys=True).encode()
        return 200, _JSON, body


def _response(status: int, ctype: bytes, body: bytes, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        _STATUS[status],
        ctype,
        len(body),
        b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n",
        body,
    )


class HTTPConnection(asyncio.Protocol):
    """One client connection: parse request heads, answer them in order."""

    __slots__ = ("server", "transport", "ip", "buf", "started", "served", "paused", "closing")

    def __init__(self, server: TrackerServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.buf = b""
        self.started = time.monotonic()
        self.served = 0
        self.paused = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection, or refuse it when the cap is reached."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        conns = self.server.connections
        if len(conns) >= self.server.config.max_connections:
            self.closing = True
            transport.write(_response(503, _PLAIN, b"too many connections\n", False))
            transport.close()
            return
        conns.add(self)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        self.ip = ip[7:] if ip.startswith("::ffff:") else ip

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.server.connections.discard(self)

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
        self.transport.write(_response(status, _PLAIN, text, False))
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
            status, ctype, body = self.server.tracker.route(target, self.ip)
            self.served += 1
            transport.write(_response(status, ctype, body, keep_alive))
            if not keep_alive:
                self.closing = True
                transport.close()
                return


class TrackerServer:
    """The listening socket, its connections and the housekeeping timers."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracker = Tracker(config)
        self.connections: set[HTTPConnection] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        """Return the port actually bound (useful with ``--port 0``)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen on the configured address."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HTTPConnection(self),
            host=self.config.bind,
            port=self.config.port,
            reuse_address=True,
            backlog=1024,
        )
        for sock in self._server.sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reap(self, now: float) -> None:
        """Close connections that are too slow to send a request, or idle too long."""
        header, idle = self.config.header_timeout, self.config.idle_timeout
        for conn in list(self.connections):
            limit = header if (conn.buf or not conn.served or conn.closing) else idle
            if now - conn.started > limit and conn.transport is not None:
                conn.closing = True
                conn.transport.abort()
                self.connections.discard(conn)

    async def housekeeping(self) -> None:
        """Reap slow connections every second and expire stale peers regularly."""
        sweep_every = max(1.0, min(self.config.interval / 2, 30.0))
        next_sweep = time.monotonic() + sweep_every
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self.reap(now)
            if self.tracker.allow is not None:
                self.tracker.allow.refresh()
            if now >= next_sweep:
                self.tracker.swarms.expire(now)
                next_sweep = now + sweep_every

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()


async def serve(config: TrackerConfig, stop: asyncio.Event | None = None) -> None:
    """Run a tracker until ``stop`` is set (or SIGTERM/SIGINT when none is given)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    server = TrackerServer(config)
    await server.start()
    started = time.monotonic()
    log.info(
        "tracker listening on http://%s:%d/ (interval %d s, allow-list %s, token %s, racks %s)",
        config.bind,
        server.port,
        config.interval,
        config.allow_file or "none",
        "required" if config.token else "none",
        config.racks or "/24",
    )
    notify_ready()
    chores = asyncio.create_task(server.housekeeping())
    try:
        await stop.wait()
    finally:
        chores.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chores
        await server.close()
        swarms = server.tracker.swarms
        log.info(
            "tracker stopped after %.0f s: %d announces, %d swarms, %d peers",
            time.monotonic() - started,
            swarms.announces,
            len(swarms.swarms),
            swarms.peer_count(),
        )


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def build_parser() -> argparse.ArgumentParser:
    """Return the tracker's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m fabmurder tracker",
        description="Run fabmurder's HTTP BitTorrent tracker in the foreground.",
    )
    add = parser.add_argument
    add("--bind", required=True, help="address to listen on")
    add("--port", type=int, required=True, help="TCP port (0: any free port)")
    add("--interval", type=int, default=1800, help="announce interval in seconds")
    add("--min-interval", type=int, default=None, help="min interval (default: interval/2)")
    add("--allow-file", default=None, help="serve only the info-hashes listed in this file")
    add("--token", default=None, help="serve only /announce/TOKEN, /scrape/TOKEN, /stats/TOKEN")
    add("--racks", default=None, help="file of 'CIDR rackname' lines (default rack: the /24)")
    add("--accept-ip-param", action="store_true", help="use a valid IPv4 'ip' parameter")
    add("--numwant-cap", type=int, default=50, help="most peers in one reply")
    add("--max-swarms", type=int, default=1000, help="most swarms tracked at once")
    add("--max-peers-per-swarm", type=int, default=50000, help="most peers in one swarm")
    add("--max-connections", type=int, default=4096, help="most open client connections")
    add("--header-timeout", type=float, default=5.0, help="seconds to send a request head")
    add("--idle-timeout", type=float, default=30.0, help="seconds a keep-alive link may idle")
    add("--verbose", action="store_true", help="log debug messages")
    return parser


def config_from_args(args: argparse.Namespace) -> TrackerConfig:
    """Build and check a :class:`TrackerConfig` from parsed arguments.

    :raises ConfigError: on a value out of range or an unreadable file.
    """
    if not 0 <= args.port < 65536:
        raise ConfigError("--port must be 0..65535", key="port")
    if args.interval < 1:
        raise ConfigError("--interval must be at least 1 second", key="interval")
    min_interval = args.min_interval if args.min_interval is not None else args.interval // 2
    if not (args.header_timeout > 0 and args.idle_timeout > 0):
        raise ConfigError("--header-timeout and --idle-timeout must be positive", key="timeout")
    if args.min_interval is not None and args.min_interval < 1:
        raise ConfigError("--min-interval must be at least 1 second", key="min_interval")
    for name in ("numwant_cap", "max_swarms", "max_peers_per_swarm", "max_connections"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive", key=name)
    if args.token is not None and (
        not args.token or not args.token.isascii() or "/" in args.token or "?" in args.token
    ):
        raise ConfigError("--token must be non-empty ASCII without '/' or '?'", key="token")
    if args.racks:
        RackMap.from_file(args.racks)
    if args.allow_file and not Path(args.allow_file).parent.is_dir():
        raise ConfigError(f"no directory for --allow-file {args.allow_file}", key="allow_file")
    return TrackerConfig(
        bind=args.bind,
        port=args.port,
        interval=args.interval,
        allow_file=args.allow_file,
        token=args.token,
        racks=args.racks,
        accept_ip_param=args.accept_ip_param,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        limits=Limits(
            interval=args.interval,
            min_interval=max(1, min_interval),
            numwant_cap=args.numwant_cap,
            max_swarms=args.max_swarms,
            max_peers_per_swarm=args.max_peers_per_swarm,
        ),
    )


def main(argv: list[str]) -> int:
    """Run the tracker command line; return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    _raise_fd_limit(config.max_connections + 64)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("tracker cannot listen on %s:%d: %s", config.bind, config.port, exc)
        return 1
    return 0
