"""The function layer: one plain function per Murder task.

Each function takes a Fabric/Invoke ``Context`` first and the ``murder``
options as typed keywords after it (:class:`~fabmurder.options.Options`;
``None`` means "use the config"). It resolves the settings once, opens one
:class:`~fabmurder.remote.Pool` of connections, makes the run's frozen
:class:`~fabmurder.plan.Plan`, and drives the host-side programs through
``python -m fabmurder ...`` over SSH. Nothing here prints: progress goes to
the ``on_event`` callback, results come back as values, and failures are
:class:`~fabmurder.errors.MurderError` subclasses.

The whole flow is :func:`distribute_files` (its stages are in
:mod:`fabmurder.distribution`); the other functions are its steps, usable
on their own, as in Murder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Unpack

from fabmurder import (
    contract,
    daemons,
    distribution,
    install,
    lock,
    peers,
    tracker_control,
    wheel_relay,
)
from fabmurder.config import Settings, settings
from fabmurder.errors import ConfigError, DeployError
from fabmurder.options import Options, UntaggedOptions
from fabmurder.plan import make_plan
from fabmurder.remote import HostResults, open_pool, run_agent
from fabmurder.report import DeployReport, Event, EventCallback, HostReport, ignore
from fabmurder.tags import validate_tag

if TYPE_CHECKING:
    from fabmurder.contract import CreateInfo, StopRecord

    Stopped = HostResults[list[StopRecord]]

Callback = EventCallback | None


def setup(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> HostResults[str]:
    """Install the agent (fabmurder and libtorrent in a venv) on every role host.

    :returns: per host, ``"installed"`` or ``"up to date"``, or the exception that stopped it.
    :raises DeployError: when any host failed, naming each one and why.
    """
    s = settings(c, **options)
    if not s.role_hosts:
        raise ConfigError("no hosts: set murder.tracker, murder.seeder and murder.peers")
    with open_pool(c, s) as pool:
        wheels = install.wheel_set(s)
        emit = on_event or ignore
        result = wheel_relay.install_everywhere(
            pool, s, wheels, s.role_hosts, install.install_host, emit
        )
    if result.failed:
        raise DeployError(f"setup failed on {len(result.failed)} host(s)", result.failed, result)
    return result


def start_tracker(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> str:
    """Start the tracker on the tracker host unless it is already running.

    :returns: the tracker's base URL (``http://host:port``). It serves a swarm
        only under a deploy token registered with the info-hash
        (``python -m fabmurder allow --add HEX --token T``, then
        ``<base>/announce/T``); its own token opens ``/stats`` and ``/metrics``.
    :raises ConfigError: when ``tracker_url`` names an external tracker.
    """
    s = settings(c, **options)
    if s.tracker_url:
        raise ConfigError("murder.tracker_url is set: the tracker is external, none is started")
    s.require("tracker")
    assert s.tracker
    emit = on_event or ignore
    with open_pool(c, s) as pool:
        plan = make_plan(pool, s, [], tracker=True)
        assert plan.tracker_token and plan.tracker_urls
        install.ensure_agent(pool, s, plan.found.stamps, [s.tracker], emit)
        tracker_control.start(pool, s, plan.address(s.tracker), plan.tracker_token, emit)
    return plan.tracker_urls.base


def _stop(
    c: Any,
    roles_of: Callable[[Settings], dict[str, list[str]]],
    tag: str | None,
    on_event: Callback,
    options: UntaggedOptions,
) -> Stopped:
    s = settings(c, **options)
    roles = roles_of(s)
    with open_pool(c, s) as pool:
        return daemons.stop_daemons(pool, s, roles, _valid(tag), on_event or ignore)


def _only(role: str, key: str) -> Callable[[Settings], dict[str, list[str]]]:
    """Return the roles of a stop task for one role: ``role`` on the host(s) of ``murder.<key>``."""

    def roles(s: Settings) -> dict[str, list[str]]:
        hosts = list(s.peers) if key == "peers" else [h for h in [getattr(s, key)] if h]
        if not hosts:
            raise ConfigError(f"murder.{key} is not set: nothing to stop", key=key)
        return {host: [role] for host in hosts}

    return roles


def _every_role(s: Settings) -> dict[str, list[str]]:
    """Return every role host's roles: the tracker (fabmurder's own), the seeder, the peers."""
    roles: dict[str, list[str]] = {}
    for host, role in [(s.tracker if not s.tracker_url else None, "tracker"), (s.seeder, "seed")]:
        if host:
            roles.setdefault(host, []).append(role)
    for host in s.peers:
        roles.setdefault(host, []).append("peer")
    if not roles:
        raise ConfigError("no hosts: set murder.tracker, murder.seeder and murder.peers")
    return roles


def _valid(tag: str | None) -> str | None:
    return validate_tag(tag) if tag else None


def stop_tracker(c: Any, *, on_event: Callback = None, **options: Unpack[Options]) -> Stopped:
    """Stop the tracker that fabmurder started on the tracker host, if it runs.

    :returns: per host, the list of daemons stopped (``daemon stop`` records).
    """
    return _stop(c, _only("tracker", "tracker"), None, on_event, options)


def stop_seeding(
    c: Any, tag: str | None = None, *, on_event: Callback = None, **options: Unpack[UntaggedOptions]
) -> Stopped:
    """Stop seeding on the seeder: release ``tag``, or every release when ``tag`` is None."""
    return _stop(c, _only("seed", "seeder"), tag, on_event, options)


def stop_peering(
    c: Any, tag: str | None = None, *, on_event: Callback = None, **options: Unpack[UntaggedOptions]
) -> Stopped:
    """Stop the peer agents on every peer: release ``tag``, or all when ``tag`` is None."""
    return _stop(c, _only("peer", "peers"), tag, on_event, options)


def stop(
    c: Any, tag: str | None = None, *, on_event: Callback = None, **options: Unpack[UntaggedOptions]
) -> Stopped:
    """Stop every fabmurder daemon (tracker, seeders, peers) on every role host.

    It goes on past the hosts it cannot reach: their failures are in the
    result (``.failed``: host -> reason), beside the others' stop records.
    """
    return _stop(c, _every_role, tag, on_event, options)


def clean_temp_files(
    c: Any,
    tag: str | None = None,
    *,
    on_event: EventCallback | None = None,
    **options: Unpack[UntaggedOptions],
) -> HostResults[object]:
    """Remove fabmurder's temp files (tarballs, torrents, logs) on every role host.

    With ``tag``, only that release's files; files of running daemons stay.
    """
    s = settings(c, **options)
    emit = on_event or ignore
    with open_pool(c, s) as pool:
        result = daemons.clean(pool, s, s.role_hosts, _valid(tag))
    for host, value in result.items():
        ok = not isinstance(value, BaseException)
        data = {"ok": ok, "reason": result.failed.get(host)}
        emit(Event("host", "temp files cleaned" if ok else "cleaning failed", host, data))
    return result


# -- the release ---------------------------------------------------------------------------------


def create_torrent(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> CreateInfo:
    """Pack ``files_path`` on the seeder and make its torrent, registered with the tracker.

    :returns: what ``create`` printed: ``tag``, ``tarball``, ``torrent``,
        ``sha256``, ``size``, ``info_hash``, ``piece_size``, ``files``.
    """
    s = settings(c, **options).require("seeder", "files_path", "tracker")
    assert s.seeder
    emit = on_event or ignore
    with open_pool(c, s) as pool:
        plan = make_plan(pool, s, [s.seeder], require=[s.seeder], tracker=True)
        hosts = [h for h in s.role_hosts if h in (s.seeder, s.tracker)]
        install.ensure_agent(pool, s, plan.found.stamps, hosts, emit)
        return distribution.create(pool, plan, emit)


def start_seeding(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> int | None:
    """Seed release ``tag`` (made by create_torrent) from the seeder, detached.

    :returns: the seeding daemon's PID (None if it was already running).
    """
    s = settings(c, **options).require("seeder", "tag")
    assert s.seeder
    emit = on_event or ignore
    with open_pool(c, s) as pool:
        plan = make_plan(pool, s, s.role_hosts, require=[s.seeder])
        install.ensure_agent(pool, s, plan.found.stamps, [s.seeder], emit)
        return daemons.start_seed(pool, plan, emit)


def distribute_files(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> DeployReport:
    """Ship ``files_path`` (or ``local_path``) from the seeder to every peer over BitTorrent.

    Packs the release on the seeder, registers its torrent with the tracker
    (started if needed), seeds it, lets all peers download, verify and
    extract it to ``destination_path/<tag>`` atomically, then stops seeding
    and peering and cleans the temp files.

    :returns: the per-host report, when at most ``max_failed_peers`` failed.
    :raises DeployError: with ``.failures`` (host -> reason) and ``.report``
        when more peers failed than allowed (the others keep their release),
        or when the tracker could not remove the release from its allow-list.
    :raises HostError: when the seeder or tracker cannot be used.
    :raises LockError: when another deploy holds the seeder's deploy lock
        (they would share its tracker and ``peer_port``); nothing was done.
    :raises ConfigError: for missing or invalid settings.

    A peer that already holds this very release (same SHA-256) at
    ``destination_path/<tag>`` counts as installed and downloads nothing; a
    peer holding another release under that tag fails without downloading,
    unless ``force``.
    """
    s = settings(c, **options).require("seeder")
    assert s.seeder
    with open_pool(c, s) as pool, lock.held(pool.get(s.seeder), s, force=s.force, emit=on_event):
        return distribution.distribute(pool, s, on_event)


def peer_download(
    c: Any,
    sha256: str | None = None,
    *,
    on_event: EventCallback | None = None,
    **options: Unpack[Options],
) -> DeployReport:
    """Download release ``tag`` (already being seeded) on every peer and wait for it.

    The torrent is copied from the seeder's ``temp_path``; ``sha256`` is
    the tarball's digest, read from the seeder when not given. The peers
    keep seeding for ``seed_after`` seconds or until stop_peering.

    :raises DeployError: when more peers failed than ``max_failed_peers``.
    """
    s = settings(c, **options).require("seeder", "peers", "destination_path", "tag")
    assert s.seeder
    report = DeployReport(
        s.tag, hosts={h: HostReport(h) for h in s.peers}, on_event=on_event or ignore
    )
    began = time.monotonic()
    with open_pool(c, s) as pool:
        own = bool(s.tracker and not s.tracker_url)
        plan = make_plan(
            pool, s, [s.seeder, *s.peers], check_dest=s.peers, require=[s.seeder], tracker=own
        )
        hosts = peers.prepare(pool, plan, report, s.peers)
        tarball = s.tmp(contract.tarball(s.tag))
        digest = run_agent(pool.get(s.seeder), s, "digest", "--file", tarball)
        report.sha256 = sha256 or str(digest.get("sha256") or "")
        report.size = int(digest.get("size") or 0)
        if hosts:
            watches = distribution.start_peers(pool, plan, hosts, report.sha256, report)
            # no finish follows (the peers keep seeding): each peer's own status is its verdict
            seeder_lost = distribution.wait(pool, plan, watches, report, verdict="poll")
        else:
            seeder_lost = None
    report.seconds = time.monotonic() - began
    return peers.judge(plan, report, seeder_lost)
