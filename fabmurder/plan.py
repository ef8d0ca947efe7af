"""The plan of one run: everything it resolves once, at its entry point, then only reads.

A run goes through pyinfra's stages: setup (resolve the settings), connect
and prepare (probe the hosts, make the tokens and URLs), execute (the
steps), disconnect. :func:`make_plan` does the first three and returns a
frozen :class:`Plan`: the settings, each host's fleet address, what the
probe found, the tokens and the tracker's URLs. Every step reads it with
an injected :class:`~fabmurder.remote.Pool`; the only thing a run changes
is its report.

fabmurder's own tracker serves only URLs that carry its token, made once
per tracker host and kept in ``temp_path/tracker.token`` there
(:func:`make_token`).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.contract import parse_reply
from fabmurder.errors import ConfigError, HostError
from fabmurder.probe import Probe, probe
from fabmurder.remote import QUIET, ConnectionPool, agent_command, run_agent

#: seconds a peer's first-byte wait allows per wave of ``parallel`` peer starts (a wave
#: took 3 s on the simulated fleet and 10 s on 256 real hosts sharing two cores)
START_WAVE = 30.0


class TrackerURLs(NamedTuple):
    """Where the run's torrent announces, and the tracker's own URLs."""

    #: the announce URL of the run's torrent (under its deploy token)
    announce: str
    #: the tracker's base URL (``http://host:port``): its token opens no swarm, a
    #: swarm is served only under the deploy token registered with its info-hash
    base: str
    #: the tracker's ``/stats`` (None for an external tracker)
    stats: str | None
    #: the tracker's ``/progress``, where the watch follows the peers' reports
    progress: str | None = None


def make_token(pool: ConnectionPool, s: Settings, agent: bool = True) -> str:
    """Return the tracker's URL token: the one kept on the tracker host, made there if missing.

    The host's ``token`` command keeps it in a 0600 file of the private
    ``temp_path`` (``murder.tracker_token``, when set, goes there on stdin).
    Without an agent on the tracker host yet (``agent`` false) no tracker
    can be running: the token is made here, and :func:`fabmurder.tracker_control.start`
    writes it there before the tracker reads it.
    """
    assert s.tracker
    if not agent:
        return s.tracker_token or secrets.token_hex(16)
    args = ["--file", s.tmp(contract.TRACKER_TOKEN)]
    given = s.tracker_token
    if given:
        args.append("--stdin")
    reply = run_agent(pool.get(s.tracker), s, "token", *args, stdin=given)
    token = reply.get("token")
    if not isinstance(token, str) or not token:
        raise HostError(s.tracker, "the token command printed no token")
    return token


def read_token(pool: ConnectionPool, s: Settings) -> str | None:
    """Return the tracker token kept on the tracker host, or None: nothing is written."""
    assert s.tracker
    command = agent_command(s, "token", "--file", s.tmp(contract.TRACKER_TOKEN), "--read")
    reply = parse_reply(pool.get(s.tracker).run(command, **QUIET).stdout) or {}
    token = reply.get("token")
    return token if isinstance(token, str) and token else None


def urls(s: Settings, address: str, token: str, deploy_token: str) -> TrackerURLs:
    """Return the URLs of fabmurder's tracker at ``address``."""
    host = f"[{address}]" if ":" in address else address
    base = f"http://{host}:{s.tracker_port}"
    return TrackerURLs(
        f"{base}/announce/{deploy_token}",
        base,
        f"{base}/stats/{token}",
        f"{base}/progress/{token}",
    )


@dataclass(frozen=True)
class Plan:
    """What one run resolved before it executes anything."""

    s: Settings
    found: Probe = field(default_factory=Probe)
    #: the secret path element this run's torrent announces under; the tracker
    #: serves that swarm, and only that one, under it until the run ends
    deploy_token: str = field(default_factory=lambda: secrets.token_hex(16))
    #: fabmurder's own tracker's token and URLs (None without one)
    tracker_token: str | None = None
    tracker_urls: TrackerURLs | None = None
    #: host -> the id its peer agent reports progress under (random, so that one
    #: host cannot speak for another); empty without fabmurder's own tracker
    report_ids: Mapping[str, str] = field(default_factory=dict)

    def address(self, host: str) -> str:
        """Return ``host``'s fleet address, as the probe learned it."""
        return self.found.addresses[host]

    @property
    def unreachable(self) -> dict[str, str]:
        """Return host -> reason for the hosts the probe could not reach."""
        return dict(self.found.failures)

    @property
    def own_tracker(self) -> str | None:
        """Return the host of fabmurder's own tracker, None with an external one."""
        return None if self.s.tracker_url else self.s.tracker

    @property
    def announce(self) -> str:
        """Return the announce URL of the run's torrent."""
        if self.s.tracker_url:
            return self.s.tracker_url
        assert self.tracker_urls is not None, "the plan resolved no tracker"
        return self.tracker_urls.announce

    @property
    def stats_url(self) -> str | None:
        """Return the tracker's ``/stats`` URL, with fabmurder's own tracker."""
        return self.tracker_urls.stats if self.tracker_urls else None

    @property
    def progress_url(self) -> str | None:
        """Return the tracker's ``/progress`` URL, with fabmurder's own tracker."""
        return self.tracker_urls.progress if self.tracker_urls else None

    @cached_property
    def first_byte_wait(self) -> float:
        """Return how long a peer waits for its first byte: the timeout, plus the start phase.

        Every peer starts before the seeder, ``parallel`` at a time, so the
        first one waits for the whole start phase: :data:`START_WAVE` seconds
        are allowed for each wave of ``parallel`` starts. The peer's own
        ``--timeout`` is then counted from its first byte.
        """
        waves = -(-len(self.s.peers) // max(1, self.s.parallel))
        return float(self.s.timeout) + START_WAVE * waves

    @cached_property
    def stripes(self) -> dict[str, str]:
        """Return peer -> its ``--stripe i/N``: the slice it asks the seeder for first.

        Built once: looking each peer up in the list again made starting N
        peers cost N².
        """
        peers = list(self.s.peers)
        if len(peers) < 2:
            return {}
        return {host: f"{i}/{len(peers)}" for i, host in reversed(list(enumerate(peers)))}

    @cached_property
    def allow_text(self) -> str:
        """Return the swarm's allow-list as the agents' ``--allow-file`` holds it, built once.

        It travels on the start command's stdin, so no command line grows
        with the number of peers (at a few thousand scattered addresses one
        would pass Linux's 128 KiB limit for an argument).
        """
        return "".join(f"{net}\n" for net in self.allow_networks)

    @cached_property
    def allow_networks(self) -> tuple[str, ...]:
        """Return the networks the swarm's addresses collapse to: the seeder and the peers.

        The tracker host is on the list only where it is the seeder or a
        peer too: from any other host, even one that knows the info-hash
        (``/stats`` shows it), no agent takes a connection.
        """
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        swarm = [h for h in (self.s.seeder, *self.s.peers) if h and h in self.found.addresses]
        for addr in (self.found.addresses[h] for h in swarm):
            try:
                nets.append(ipaddress.ip_network(addr))
            except ValueError:
                continue
        networks: list[str] = []
        for version in (4, 6):
            group = [n for n in nets if n.version == version]
            for net in ipaddress.collapse_addresses(group):  # type: ignore[type-var]
                networks.append(str(net))
        return tuple(networks)


def make_plan(
    pool: ConnectionPool,
    s: Settings,
    hosts: Iterable[str],
    *,
    check_dest: Iterable[str] = (),
    require: Iterable[str | None] = (),
    tracker: bool = False,
) -> Plan:
    """Probe ``hosts`` and resolve the tracker's token and URLs into a plan.

    :param check_dest: the hosts whose ``destination_path/<tag>`` the probe looks
        at; a tree there that fabmurder did not make is refused before
        anything is written (see :func:`refuse_foreign`).
    :param require: hosts the run cannot do without: the first of them that
        cannot be reached raises.
    :param tracker: resolve fabmurder's own tracker (probed too): make its
        token on the tracker host if it has none, and build its URLs.
    :raises HostError: for a required host (or the tracker) that cannot be reached.
    :raises ConfigError: for a foreign tree at the destination.
    """
    own = s.tracker if tracker and not s.tracker_url else None
    if tracker and not s.tracker_url:
        s.require("tracker")
    names = list(dict.fromkeys([*hosts, *([own] if own else [])]))
    found = probe(pool, s, names, check_dest)
    for host in [*require, own]:
        if host and host in found.failures:
            raise HostError(host, found.failures[host])
    refuse_foreign(s, found)
    if not own:
        return Plan(s, found)
    deploy_token = secrets.token_hex(16)
    token = make_token(pool, s, agent=bool(found.stamps.get(own)))
    tracker_urls = urls(s, found.addresses[own], token, deploy_token)
    report_ids = {host: secrets.token_hex(8) for host in found.addresses}
    return Plan(s, found, deploy_token, token, tracker_urls, report_ids)


def refuse_foreign(s: Settings, found: Probe) -> None:
    """Refuse a ``destination_path/<tag>`` fabmurder did not make, before anything is written.

    A release the peer agent installed carries a marker beside it
    (``.<tag>.sha256``); a tree without one is someone else's and is never
    replaced without ``force``. Trees with a marker are the peer agent's
    call: this very release counts as installed, another one is refused.

    :raises ConfigError: naming the hosts.
    """
    foreign = sorted(h for h, digest in found.existing.items() if not digest)
    if foreign and not s.force:
        raise ConfigError(
            f"{s.destination_path}/{s.tag} already exists on {', '.join(foreign)} and was not "
            "installed by fabmurder; nothing was changed (use --force to replace it)",
            key="force",
        )
