"""Serve the tracker over HTTP/1.1 with asyncio, and its command line.

``python -m fabmurder tracker --bind ADDR --port PORT [--interval S]
[--allow-file PATH] [--token TOKEN] [--racks PATH]`` runs in the foreground
until SIGTERM or SIGINT and then exits 0.

:class:`Tracker` routes a request to the swarm state; each connection is a
:class:`~fabmurder.tracker.connection.Connection` that calls it
synchronously, so the state is changed and the reply computed without an
``await`` and nothing is ever held across I/O. :class:`TrackerServer` owns
the listening socket and the housekeeping: it drops connections that do not
send a whole request head within ``--header-timeout`` seconds (slowloris),
idle longer than ``--idle-timeout``, or idle longer than ``--error-idle-timeout``
after an error reply, and expires silent peers. Caps bound connections (in all
and per client address), swarms, peers per swarm and peers per address in a
swarm. ``/metrics`` serves counters in Prometheus' text format.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fabmurder.errors import ConfigError
from fabmurder.host import privatedir
from fabmurder.host.cli import raise_fd_limit
from fabmurder.host.daemon import notify_ready
from fabmurder.tracker.allow import AllowList
from fabmurder.tracker.connection import JSON, PLAIN, Connection, Registry, Reply
from fabmurder.tracker.metrics import Counters, render
from fabmurder.tracker.progress import Progress, parse_report, parse_since
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

NOT_FOUND = b"not found\n"

log = logging.getLogger("fabmurder.tracker")

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
    max_connections_per_ip: int = 256
    header_timeout: float = 5.0
    idle_timeout: float = 30.0
    error_idle_timeout: float = 2.0
    #: seconds without a report after which a reporter is marked silent
    report_silence: float = 15.0
    limits: Limits = field(default_factory=Limits)


class Tracker:
    """Route HTTP requests to the swarm state; no I/O happens here."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.limits = config.limits
        racks = RackMap.from_file(config.racks) if config.racks else RackMap({})
        self.swarms = Swarms(self.limits, racks.rack_of, config.accept_ip_param)
        self.counters = Counters()
        self.progress = Progress(self.limits.max_swarms, self.limits.max_peers_per_swarm)
        #: the open connections; the server sets it, the metrics read it
        self.registry: Registry | None = None
        self.allow: AllowList | None = None
        if config.allow_file:
            self.allow = AllowList(config.allow_file)
            self.allow.on_change = self._keep_only
        suffix = b"/" + config.token.encode() if config.token else b""
        # The tracker's own token opens its views only: a swarm is reachable
        # under its deploy token alone (below), so whoever reads /stats (the
        # info-hashes) still cannot join a swarm or learn its peers.
        self.routes: dict[bytes, Handler] = {
            b"/stats" + suffix: self.stats,
            b"/metrics" + suffix: self.metrics,
            b"/progress" + suffix: self.progress_view,
        }
        if not config.token:
            # An open tracker serves swarms and takes reports openly; with a
            # token, only under a deploy token (below).
            self.routes[b"/announce"] = self.announce
            self.routes[b"/scrape"] = self.scrape
            self.routes[b"/report"] = self.report

    def _keep_only(self, allowed: frozenset[bytes]) -> None:
        self.swarms.keep_only(allowed)
        self.progress.keep_only(allowed)

    def route(self, target: bytes, ip: str) -> Reply:
        """Answer one GET request for ``target`` from address ``ip``."""
        path, _, query = target.partition(b"?")
        handler = self.routes.get(path)
        if handler is not None:
            reply = handler(query, ip)
        else:
            deploy = self._deploy_token(path)
            if deploy is None:
                reply = (404, PLAIN, NOT_FOUND)
            elif path.startswith(b"/announce/"):
                reply = self.announce(query, ip, deploy)
            elif path.startswith(b"/report/"):
                reply = self.report(query, ip, deploy)
            else:
                reply = self.scrape(query, ip, deploy)
        if reply[0] == 404:
            self.counters.not_found += 1
        return reply

    def _deploy_token(self, path: bytes) -> str | None:
        """Return the deploy token of ``/announce/<T>`` or ``/scrape/<T>``, if such paths apply.

        With ``--token`` and an allow-list, each registered info-hash may carry
        its own token (``allow --add HEX --token T``): its swarm is then
        served under that token, and only its swarm (the tracker's own token
        serves no swarm at all). A deploy's torrents name
        the deploy's token, so they open nothing else, and nothing at all once
        the deploy is over and its info-hash has been removed.
        """
        if not self.config.token or self.allow is None:
            return None
        for prefix in (b"/announce/", b"/scrape/", b"/report/"):
            if path.startswith(prefix):
                token = path[len(prefix) :]
                if token and b"/" not in token and token.isascii():
                    return token.decode("ascii")
        return None

    def _deploy_allows(self, info_hash: bytes, deploy: str | None) -> bool:
        if deploy is None:
            return True
        assert self.allow is not None
        registered = self.allow.token_of(info_hash)
        return registered is not None and hmac.compare_digest(registered, deploy)

    def announce(self, query: bytes, ip: str, deploy: str | None = None) -> Reply:
        """Handle ``/announce`` (BEP 3, 23), or ``/announce/<deploy token>``."""
        limits = self.limits
        try:
            req = parse_announce(query)
            if not self._deploy_allows(req.info_hash, deploy):
                return 404, PLAIN, NOT_FOUND
            if self.allow is not None and req.info_hash not in self.allow:
                raise RequestError("info_hash is not served by this tracker")
            result = self.swarms.announce(req, ip, time.monotonic())
        except RequestError as exc:
            self.counters.failures += 1
            if deploy is not None:
                return 404, PLAIN, NOT_FOUND
            return 200, PLAIN, encode_failure(str(exc))
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
        return 200, PLAIN, body

    def scrape(self, query: bytes, ip: str, deploy: str | None = None) -> Reply:
        """Handle ``/scrape`` (BEP 48), or ``/scrape/<deploy token>`` for its swarms only."""
        self.counters.scrapes += 1
        try:
            hashes = parse_scrape(query)
        except RequestError as exc:
            self.counters.failures += 1
            if deploy is not None:
                return 404, PLAIN, NOT_FOUND
            return 200, PLAIN, encode_failure(str(exc))
        if deploy is not None and not (
            hashes and all(self._deploy_allows(h, deploy) for h in hashes)
        ):
            return 404, PLAIN, NOT_FOUND
        if self.allow is not None and hashes:
            hashes = [h for h in hashes if h in self.allow]
            if not hashes:
                return 200, PLAIN, encode_failure("info_hash is not served by this tracker")
        return 200, PLAIN, encode_scrape(self.swarms.scrape(hashes))

    def stats(self, query: bytes, ip: str) -> Reply:
        """Handle ``/stats``: JSON per swarm for the controller's progress bar."""
        body = json.dumps({"swarms": self.swarms.stats()}, sort_keys=True).encode()
        return 200, JSON, body

    def report(self, query: bytes, ip: str, deploy: str | None = None) -> Reply:
        """Handle ``/report`` (or ``/report/<deploy token>``): one agent's progress."""
        try:
            req = parse_report(query)
            if not self._deploy_allows(req.info_hash, deploy):
                return 404, PLAIN, NOT_FOUND
            if self.allow is not None and req.info_hash not in self.allow:
                raise RequestError("info_hash is not served by this tracker")
            self.progress.add(req, ip, time.monotonic())
        except RequestError as exc:
            self.counters.failures += 1
            if deploy is not None:
                return 404, PLAIN, NOT_FOUND
            return 400, PLAIN, f"{exc}\n".encode()
        return 200, PLAIN, b"ok\n"

    def progress_view(self, query: bytes, ip: str) -> Reply:
        """Handle ``/progress``: a swarm's totals and the reports changed since ``since``."""
        try:
            info_hash, since = parse_since(query)
        except RequestError as exc:
            self.counters.failures += 1
            return 400, PLAIN, f"{exc}\n".encode()
        view = self.progress.view(info_hash, since)
        # the swarm's own numbers too, so one request draws the whole progress line
        swarm = self.swarms.swarms.get(info_hash)
        view["swarm"] = swarm.stats() if swarm is not None else None
        body = json.dumps(view, sort_keys=True).encode()
        return 200, JSON, body

    def metrics(self, query: bytes, ip: str) -> Reply:
        """Handle ``/metrics``: counters and gauges in Prometheus' text format."""
        registry = self.registry
        connections = (len(registry), registry.refused) if registry is not None else (0, 0)
        body = render(self.swarms, self.counters, *connections, self.progress.reports)
        return 200, b"text/plain; version=0.0.4", body


class TrackerServer:
    """The listening socket, its connections and the housekeeping timers."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracker = Tracker(config)
        self.registry = Registry(config.max_connections, config.max_connections_per_ip)
        self.tracker.registry = self.registry
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
            lambda: Connection(self.tracker.route, self.registry),
            host=self.config.bind,
            port=self.config.port,
            reuse_address=True,
            backlog=1024,
        )
        for sock in self._server.sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reap(self, now: float) -> None:
        """Close connections that are too slow to send a request, or idle too long.

        A connection whose last reply was an error gets ``error_idle_timeout``
        rather than ``idle_timeout``: a client that keeps a link open with
        requests nobody serves must not hold a slot for long.
        """
        config = self.config
        header, idle, erred = config.header_timeout, config.idle_timeout, config.error_idle_timeout
        for conn in list(self.registry.open):
            if conn.buf or not conn.served or conn.closing:
                limit = header
            else:
                limit = erred if conn.erred else idle
            if now - conn.started > limit and conn.transport is not None:
                conn.closing = True
                conn.transport.abort()
                self.registry.forget(conn)

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
            self.tracker.progress.mark_silent(now - self.config.report_silence)
            if now >= next_sweep:
                self.tracker.swarms.expire(now)
                next_sweep = now + sweep_every

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in list(self.registry.open):
            if conn.transport is not None:
                conn.transport.abort()
            self.registry.forget(conn)


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
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token", default=None, help="serve only under TOKEN (visible in ps: prefer --token-file)"
    )
    tokens.add_argument(
        "--token-file",
        default=None,
        help="read the token from this file (this user's own, mode 0600)",
    )
    add("--racks", default=None, help="file of 'CIDR rackname' lines (default rack: the /24)")
    add("--accept-ip-param", action="store_true", help="use a valid IPv4 'ip' parameter")
    add("--numwant-cap", type=int, default=50, help="most peers in one reply")
    add(
        "--seeder-numwant-cap",
        type=int,
        default=5000,
        help="most peers in one reply to a peer that joined as a seeder",
    )
    add("--max-swarms", type=int, default=1000, help="most swarms tracked at once")
    add("--max-peers-per-swarm", type=int, default=50000, help="most peers in one swarm")
    add("--max-peers-per-ip", type=int, default=256, help="most peers of one address in a swarm")
    add("--max-connections", type=int, default=4096, help="most open client connections")
    add("--max-connections-per-ip", type=int, default=256, help="most connections of one address")
    add("--header-timeout", type=float, default=5.0, help="seconds to send a request head")
    add("--idle-timeout", type=float, default=30.0, help="seconds a keep-alive link may idle")
    add(
        "--report-silence",
        type=float,
        default=15.0,
        help="seconds without a progress report before a reporter counts as silent",
    )
    add(
        "--error-idle-timeout",
        type=float,
        default=2.0,
        help="seconds a link may idle after an error reply",
    )
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
    timeouts = (args.header_timeout, args.idle_timeout, args.error_idle_timeout)
    if not all(t > 0 for t in (*timeouts, args.report_silence)):
        raise ConfigError(
            "--header-timeout, --idle-timeout, --error-idle-timeout and --report-silence "
            "must be positive",
            key="timeout",
        )
    if args.min_interval is not None and args.min_interval < 1:
        raise ConfigError("--min-interval must be at least 1 second", key="min_interval")
    for name in (
        "numwant_cap",
        "seeder_numwant_cap",
        "max_swarms",
        "max_peers_per_swarm",
        "max_peers_per_ip",
        "max_connections",
        "max_connections_per_ip",
    ):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive", key=name)
    if args.token_file is not None:
        try:
            args.token = privatedir.read_private(args.token_file)
        except privatedir.UnsafeDirectory as exc:
            raise ConfigError(str(exc), key="token_file") from exc
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
        max_connections_per_ip=args.max_connections_per_ip,
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        error_idle_timeout=args.error_idle_timeout,
        report_silence=args.report_silence,
        limits=Limits(
            interval=args.interval,
            min_interval=max(1, min_interval),
            numwant_cap=args.numwant_cap,
            seeder_numwant_cap=args.seeder_numwant_cap,
            max_swarms=args.max_swarms,
            max_peers_per_swarm=args.max_peers_per_swarm,
            max_peers_per_ip=args.max_peers_per_ip,
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
    raise_fd_limit(config.max_connections + 64)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("tracker cannot listen on %s:%d: %s", config.bind, config.port, exc)
        return 1
    return 0
