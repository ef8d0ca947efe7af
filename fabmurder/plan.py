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
from fabmurder.errors import ConfigError, HostError
from fabmurder.probe import Probe, probe
from fabmurder.remote import QUIET, ConnectionPool, quote, shell


class TrackerURLs(NamedTuple):
    """Where the run's torrent announces, and the tracker's own URLs."""

    #: the announce URL of the run's torrent (under its deploy token)
    announce: str
    #: the tracker's own announce URL (under the tracker token), for other clients
    tracker_announce: str
    #: the tracker's ``/stats`` (None for an external tracker)
    stats: str | None
    #: the tracker's ``/progress``, where the watch follows the peers' reports
    progress: str | None = None


def make_token(pool: ConnectionPool, s: Settings) -> str:
    """Return the tracker's URL token, written to the tracker host on first use."""
    assert s.tracker
    path = s.tmp(contract.TRACKER_TOKEN)
    wanted = s.tracker_token or secrets.token_hex(16)
    tmp = quote(path + ".tmp")
    write = f"(umask 077 && printf %s {quote(wanted)} > {tmp} && mv {tmp} {quote(path)})"
    keep = "" if s.tracker_token else f"test -s {quote(path)} || "
    command = f"mkdir -p {quote(s.temp_path)} && {{ {keep}{write}; }} && cat {quote(path)}"
    token = shell(pool.get(s.tracker), command, "making the tracker token").stdout.strip()
    if not token:
        raise HostError(s.tracker, f"the tracker token file {path} is empty")
    return str(token)


def read_token(pool: ConnectionPool, s: Settings) -> str | None:
    """Return the tracker token kept on the tracker host, or None: nothing is written."""
    assert s.tracker
    path = quote(s.tmp(contract.TRACKER_TOKEN))
    token = pool.get(s.tracker).run(f"cat -- {path} 2>/dev/null", **QUIET).stdout.strip()
    return str(token) or None


def urls(s: Settings, address: str, token: str, deploy_token: str) -> TrackerURLs:
    """Return the URLs of fabmurder's tracker at ``address``."""
    host = f"[{address}]" if ":" in address else address
    base = f"http://{host}:{s.tracker_port}"
    return TrackerURLs(
        f"{base}/announce/{deploy_token}",
        f"{base}/announce/{token}",
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
    def allow_args(self) -> tuple[str, ...]:
        """Return ``--allow`` arguments naming every probed host's address (built once)."""
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for addr in self.found.addresses.values():
            try:
                nets.append(ipaddress.ip_network(addr))
            except ValueError:
                continue
        args: list[str] = []
        for version in (4, 6):
            group = [n for n in nets if n.version == version]
            for net in ipaddress.collapse_addresses(group):  # type: ignore[type-var]
                args += ["--allow", str(net)]
        return tuple(args)


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
    token = make_token(pool, s)
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
