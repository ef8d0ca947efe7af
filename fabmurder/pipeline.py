"""The function layer: one plain function per Murder task.

Each function takes a Fabric/Invoke ``Context`` first and the ``murder``
options as typed keywords after it (:class:`~fabmurder.options.Options`;
``None`` means "use the config"). It resolves the settings once, opens one
:class:`~fabmurder.remote.Pool` of connections, makes the run's frozen
:class:`~fabmurder.plan.Plan`, and drives the host-side programs through
``python -m fabmurder ...`` over SSH. Nothing here prints: progress goes to
the ``on_event`` callback, results come back as values, and failures are
:class:`~fabmurder.errors.MurderError` subclasses.

The whole flow is :func:`distribute_files` (:func:`distribute` over a pool
the caller holds); the other functions are its steps, usable on their own,
as in Murder.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack, cast

from fabmurder import contract, daemons, install, peers, tracker_control
from fabmurder.config import Settings, settings
from fabmurder.errors import ConfigError, DeployError, HostError, MurderError
from fabmurder.options import Options, UntaggedOptions
from fabmurder.plan import Plan, make_plan
from fabmurder.remote import ConnectionPool, HostResults, open_pool, run_agent
from fabmurder.report import DeployReport, Event, EventCallback, HostReport, ignore
from fabmurder.tags import validate_tag
from fabmurder.upload import upload_local
from fabmurder.watch import Watch, watch

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
        result = pool.fan_out(s.role_hosts, lambda conn: install.install_host(conn, s, wheels))
    if result.failed:
        raise DeployError(f"setup failed on {len(result.failed)} host(s)", result.failed, result)
    return result


def start_tracker(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> str:
    """Start the tracker on the tracker host unless it is already running.

    :returns: the tracker's announce URL, for clients of its own.
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
    return plan.tracker_urls.tracker_announce


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


def _create(pool: ConnectionPool, plan: Plan, emit: EventCallback) -> CreateInfo:
    """Pack the release on the seeder and make its torrent, registered with the tracker."""
    s = plan.s
    assert s.seeder
    src = upload_local(pool, s) if s.local_path else s.files_path
    args: list[object] = ["--src", src, "--out-dir", s.temp_path, "--tag", s.tag]
    args += ["--announce", plan.announce]
    # Without a configured size, create picks one for the release's size and
    # the number of peers (more, smaller pieces for many peers).
    args += ["--piece-size", s.piece_size] if s.piece_size else ["--peers", max(1, len(s.peers))]
    reply = run_agent(pool.get(s.seeder), s, "create", *args)  # it makes temp_path
    for key in ("info_hash", "sha256", "torrent"):
        if not reply.get(key):
            raise HostError(s.seeder, f"create printed no {key}: {reply}")
    info = cast("CreateInfo", reply)
    tracker_control.register(pool, s, info["info_hash"], plan.deploy_token)
    message = f"torrent {info['info_hash']} ({info.get('size', 0)} bytes)"
    emit(Event("host", message, s.seeder, {"ok": True, "create": info}))
    return info


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
        return _create(pool, plan, emit)


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


def _start_peers(
    pool: ConnectionPool, plan: Plan, hosts: list[str], sha256: str, report: DeployReport
) -> dict[str, Watch]:
    """Start the peer agents on ``hosts``; return the watch of each that started."""
    s = plan.s
    assert s.seeder
    with tempfile.TemporaryDirectory(prefix="fabmurder-") as tmp:
        torrent = Path(tmp) / contract.torrent(s.tag)
        pool.get(s.seeder).get(s.tmp(contract.torrent(s.tag)), local=str(torrent))
        report.phase(f"starting {len(hosts)} peer(s)")
        started = time.monotonic()
        result = pool.fan_out(
            hosts, lambda conn: daemons.start_peer(pool, plan, conn, torrent, sha256)
        )
    for host, reason in result.failed.items():
        report.fail(host, f"could not start the peer agent: {reason}")
    # polled=started: the first poll comes FAST_POLL after the start, not at once
    return {
        host: Watch(report.hosts[host], started=started, polled=started)
        for host in hosts
        if host in result.succeeded
    }


def _wait(
    pool: ConnectionPool, plan: Plan, watches: dict[str, Watch], report: DeployReport
) -> str | None:
    """Wait for the started peers to install the release or fail; return a dead seeder's story."""
    if not watches:
        return None
    report.phase(f"downloading on {len(watches)} peer(s)")
    watch(pool, plan, watches, report.size, report)
    return _seeder_loss(pool, plan, report)


def _seeder_loss(pool: ConnectionPool, plan: Plan, report: DeployReport) -> str | None:
    """Name a dead seeder in the reasons of the peers that timed out; return the sentence.

    Peers that lose the seeder before the swarm holds every piece can only
    time out; without this the cause would be one log away. Checked once,
    after the wait and before the cleanup removes the seeder's PID file.
    """
    s = plan.s
    failed = [r for r in report.hosts.values() if r.reason and "timed out" in r.reason]
    if not failed or not s.seeder or s.seeder in plan.unreachable:
        return None
    pid_file = s.tmp(contract.pid_file("seed", s.tag))
    try:
        data = run_agent(pool.get(s.seeder), s, "daemon", "status", "--pid-file", pid_file)
    except MurderError:
        return None
    if data.get("alive") is not False or not data.get("pid"):
        return None
    lost = f"the seeder's agent on {s.seeder} (pid {data['pid']}) died during the transfer"
    report.emit(Event("warning", lost, s.seeder))
    for r in failed:
        r.reason = f"{r.reason}; {lost}"
    return lost


def _finish(
    pool: ConnectionPool, plan: Plan, hosts: list[str], report: DeployReport, quiet: bool
) -> None:
    """Stop seeding and peering on ``hosts`` and clean the temp files; never raises.

    :param quiet: after a normal end a summary will do; after an
        interruption every stop is news.
    """
    s = plan.s
    report.phase("stopping seeding and peering, cleaning temp files")
    roles: dict[str, list[str]] = {}
    for host, role in [(s.seeder, "seed"), *((h, "peer") for h in hosts)]:
        if host:
            roles.setdefault(host, []).append(role)
    try:
        # One command per host stops its agents and removes the release's temp
        # files, beside the tracker's deregistration: each SSH round trip that
        # starts a Python on every host was a large part of a small deploy's tail.
        with ThreadPoolExecutor(max_workers=1) as side:
            info_hash = report.info_hash
            deregistering = (
                side.submit(tracker_control.deregister, pool, s, info_hash) if info_hash else None
            )
            result = daemons.stop_daemons(
                pool, s, roles, s.tag, report.emit, clean=True, quiet=quiet
            )
            records = [r for value in result.succeeded.values() for r in value]
            report.phase(f"stopped {sum(1 for r in records if r.get('stopped'))} daemon(s)")
            if deregistering:
                deregistering.result()
    except MurderError as exc:
        report.emit(Event("warning", f"cleanup incomplete: {exc}"))


def distribute(
    pool: ConnectionPool, s: Settings, on_event: EventCallback | None = None
) -> DeployReport:
    """Run :func:`distribute_files` for the settings ``s`` over ``pool``, which the caller holds."""
    s.require("seeder", "peers", "files_path", "destination_path", "tracker")
    assert s.seeder
    began = time.monotonic()
    report = DeployReport(
        s.tag, hosts={h: HostReport(h) for h in s.peers}, on_event=on_event or ignore
    )
    report.phase(f"connecting to {len(s.role_hosts)} host(s)")
    # Whether a peer's destination already holds the tag is the peer
    # agent's call: the same release counts as installed, another one is
    # refused before anything is downloaded (unless force).
    plan = make_plan(pool, s, s.role_hosts, check_dest=s.peers, require=[s.seeder], tracker=True)
    hosts = peers.prepare(pool, plan, report, s.role_hosts)
    watches: dict[str, Watch] = {}
    seeder_lost = None
    interrupted = False
    try:
        report.phase("creating the torrent")
        info = _create(pool, plan, report.emit)
        report.info_hash, report.sha256 = info["info_hash"], info["sha256"]
        report.size = int(info.get("size") or 0)
        if plan.own_tracker and plan.tracker_token:
            report.phase("starting the tracker")
            address = plan.address(plan.own_tracker)
            tracker_control.start(pool, s, address, plan.tracker_token, report.emit)
        # Peers first, seeder last: every peer is in the swarm when seeding
        # starts, so each asks the seeder for its own slice (--stripe) and
        # none gets a head start that makes the seeder send pieces twice.
        watches = _start_peers(pool, plan, hosts, info["sha256"], report) if hosts else {}
        report.phase("seeding")
        daemons.start_seed(pool, plan, report.emit)
        seeder_lost = _wait(pool, plan, watches, report)
    except KeyboardInterrupt:
        report.emit(Event("warning", "interrupted: stopping every agent this run started"))
        interrupted = True
        raise
    finally:
        reachable = [h for h in hosts if not (h in watches and watches[h].lost)]
        _finish(pool, plan, reachable, report, quiet=not interrupted)
    report.seconds = time.monotonic() - began
    return peers.judge(plan, report, seeder_lost)


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
        when more peers failed than allowed; the others keep their release.
    :raises HostError: when the seeder or tracker cannot be used.
    :raises ConfigError: for missing or invalid settings.

    A peer that already holds this very release (same SHA-256) at
    ``destination_path/<tag>`` counts as installed and downloads nothing; a
    peer holding another release under that tag fails without downloading,
    unless ``force``.
    """
    s = settings(c, **options)
    with open_pool(c, s) as pool:
        return distribute(pool, s, on_event)


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
            watches = _start_peers(pool, plan, hosts, report.sha256, report)
            seeder_lost = _wait(pool, plan, watches, report)
        else:
            seeder_lost = None
    report.seconds = time.monotonic() - began
    return peers.judge(plan, report, seeder_lost)
