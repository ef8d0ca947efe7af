"""The function layer: one plain function per Murder task.

Each function takes a Fabric/Invoke ``Context`` first and keyword overrides
of the ``murder`` config after it (``None`` means "use the config"), opens
one connection per role host, and drives the host-side programs through
``python -m fabmurder ...`` over SSH. Nothing here prints: progress goes to
the ``on_event`` callback, results come back as values, and failures are
:class:`~fabmurder.errors.MurderError` subclasses.

The whole flow is :func:`distribute_files`; the other functions are its
steps, usable on their own, as in Murder.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fabric.group import GroupResult

from fabmurder import install
from fabmurder.agents import (
    clean,
    register,
    start_peer,
    start_seed,
    start_tracker_daemon,
    stop_daemons,
    tracker_urls,
    valid_tag,
)
from fabmurder.errors import ConfigError, DeployError, HostError, MurderError
from fabmurder.remote import failure_reason, run_agent
from fabmurder.report import DeployReport, Event, EventCallback, HostReport
from fabmurder.roles import (
    Run,
    ensure_agent,
    install_agent,
    open_run,
    probe,
    quote,
    require_reachable,
    shell,
)
from fabmurder.upload import upload_local
from fabmurder.watch import Watch, watch


def setup(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> GroupResult:
    """Install the agent (fabmurder and libtorrent in a venv) on every role host.

    :returns: Fabric's GroupResult: ``"installed"`` or ``"up to date"`` per
        host, or the exception that stopped it.
    :raises DeployError: when any host failed, naming each one and why.
    """
    run = open_run(c, on_event, **overrides)
    with run.pool:
        hosts = run.s.role_hosts
        if not hosts:
            raise ConfigError("no hosts: set murder.tracker, murder.seeder and murder.peers")
        wheels = install.wheel_set(run.s)
        result = run.pool.fan_out(hosts, lambda conn: install.install_host(conn, run.s, wheels))
    failures = {h: failure_reason(v) for h, v in run.pool.by_host(result.failed).items()}
    if failures:
        raise DeployError(f"setup failed on {len(failures)} host(s)", failures, result)
    return result


def start_tracker(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> str:
    """Start the tracker on the tracker host unless it is already running.

    :returns: the announce URL peers use.
    :raises ConfigError: when ``tracker_url`` names an external tracker.
    """
    run = open_run(c, on_event, **overrides)
    if run.s.tracker_url:
        raise ConfigError("murder.tracker_url is set: the tracker is external, none is started")
    run.s.require("tracker")
    assert run.s.tracker
    with run.pool:
        announce, _ = tracker_urls(run, deploy=False)
        ensure_agent(run, [run.s.tracker])
        start_tracker_daemon(run)
    return announce


def _stop_task(
    c: Any,
    role: str,
    stem: str,
    tag: str | None,
    on_event: EventCallback | None,
    overrides: dict[str, Any],
) -> GroupResult:
    run = open_run(c, on_event, **overrides)
    s = run.s
    hosts = list(s.peers) if role == "peers" else [h for h in [getattr(s, role)] if h]
    if not hosts:
        raise ConfigError(f"murder.{role} is not set: nothing to stop", key=role)
    with run.pool:
        return stop_daemons(run, {host: [stem] for host in hosts}, tag)


def stop_tracker(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> GroupResult:
    """Stop the tracker that fabmurder started on the tracker host, if it runs.

    :returns: per host, the list of daemons stopped (``daemon stop`` records).
    """
    return _stop_task(c, "tracker", "tracker", None, on_event, overrides)


def stop_seeding(
    c: Any, tag: str | None = None, *, on_event: EventCallback | None = None, **overrides: Any
) -> GroupResult:
    """Stop seeding on the seeder: release ``tag``, or every release when ``tag`` is None."""
    return _stop_task(c, "seeder", "seed", valid_tag(tag), on_event, overrides)


def stop_peering(
    c: Any, tag: str | None = None, *, on_event: EventCallback | None = None, **overrides: Any
) -> GroupResult:
    """Stop the peer agents on every peer: release ``tag``, or all when ``tag`` is None."""
    return _stop_task(c, "peers", "peer", valid_tag(tag), on_event, overrides)


def clean_temp_files(
    c: Any, tag: str | None = None, *, on_event: EventCallback | None = None, **overrides: Any
) -> GroupResult:
    """Remove fabmurder's temp files (tarballs, torrents, logs) on every role host.

    With ``tag``, only that release's files; files of running daemons stay.
    """
    run = open_run(c, on_event, **overrides)
    with run.pool:
        result = clean(run, run.s.role_hosts, valid_tag(tag))
    for host, value in run.pool.by_host(result).items():
        ok = not isinstance(value, BaseException)
        data = {"ok": ok, "reason": None if ok else failure_reason(value)}
        run.emit(Event("host", "temp files cleaned" if ok else "cleaning failed", host, data))
    return result


# -- the release ---------------------------------------------------------------------------------


def _create(run: Run, announce: str) -> dict[str, Any]:
    s = run.s
    assert s.seeder
    src = upload_local(run) if s.local_path else s.files_path
    args: list[object] = [
        "--src",
        src,
        "--out-dir",
        s.temp_path,
        "--tag",
        s.tag,
        "--announce",
        announce,
    ]
    # Without a configured size, create picks one for the release's size and
    # the number of peers (more, smaller pieces for many peers).
    args += ["--piece-size", s.piece_size] if s.piece_size else ["--peers", max(1, len(s.peers))]
    info = run_agent(run.conn(s.seeder), s, "create", *args)  # it makes temp_path
    for key in ("info_hash", "sha256", "torrent"):
        if not info.get(key):
            raise HostError(s.seeder, f"create printed no {key}: {info}")
    register(run, info["info_hash"])
    run.emit(
        Event(
            "host",
            f"torrent {info['info_hash']} ({info.get('size', 0)} bytes)",
            s.seeder,
            {"ok": True, "create": info},
        )
    )
    return info


def create_torrent(
    c: Any, *, on_event: EventCallback | None = None, **overrides: Any
) -> dict[str, Any]:
    """Pack ``files_path`` on the seeder and make its torrent, registered with the tracker.

    :returns: what ``create`` printed: ``tag``, ``tarball``, ``torrent``,
        ``sha256``, ``size``, ``info_hash``, ``piece_size``, ``files``.
    """
    run = open_run(c, on_event, **overrides)
    run.s.require("seeder", "files_path", "tracker")
    assert run.s.seeder
    with run.pool:
        require_reachable(run, probe(run, [run.s.seeder]), run.s.seeder)
        announce, _ = tracker_urls(run)
        ensure_agent(run, [h for h in run.s.role_hosts if h in (run.s.seeder, run.s.tracker)])
        return _create(run, announce)


def start_seeding(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> int | None:
    """Seed release ``tag`` (made by create_torrent) from the seeder, detached.

    :returns: the seeding daemon's PID (None if it was already running).
    """
    run = open_run(c, on_event, **overrides)
    run.s.require("seeder", "tag")
    assert run.s.seeder
    with run.pool:
        failures = probe(run, run.s.role_hosts)
        require_reachable(run, failures, run.s.seeder)
        ensure_agent(run, [run.s.seeder])
        return start_seed(run)


def _download(
    run: Run, peers: list[str], info: dict[str, Any], stats_url: str | None, report: DeployReport
) -> None:
    """Start the peer agents on ``peers`` and wait for them; fill ``report``."""
    _wait_peers(run, _start_peers(run, peers, info, report), stats_url, info, report)


def _wait_peers(
    run: Run,
    watches: dict[str, Watch],
    stats_url: str | None,
    info: dict[str, Any],
    report: DeployReport,
) -> None:
    """Wait for the started peers to install the release or fail."""
    if watches:
        run.phase(f"downloading on {len(watches)} peer(s)")
        watch(run, watches, stats_url, info)
        note_seeder_loss(run, report)


def _start_peers(
    run: Run, peers: list[str], info: dict[str, Any], report: DeployReport
) -> dict[str, Watch]:
    """Start the peer agents on ``peers``; return the watch of each that started."""
    s = run.s
    assert s.seeder
    with tempfile.TemporaryDirectory(prefix="fabmurder-") as tmp:
        torrent = Path(tmp) / f"{s.tag}.torrent"
        run.conn(s.seeder).get(s.tmp(f"{s.tag}.torrent"), local=str(torrent))
        run.phase(f"starting {len(peers)} peer(s)")
        started = time.monotonic()
        result = run.pool.by_host(
            run.pool.fan_out(peers, lambda conn: start_peer(run, conn, torrent, info["sha256"]))
        )
    watches: dict[str, Watch] = {}
    for host in peers:
        value = result[host]
        r = report.hosts[host]
        if isinstance(value, BaseException):
            r.reason = f"could not start the peer agent: {failure_reason(value)}"
            run.emit(Event("host", "failed", host, {"ok": False, "reason": r.reason}))
            continue
        # polled=started: the first poll comes FAST_POLL after the start, not at once
        watches[host] = Watch(r, pid=value, started=started, polled=started)
    return watches


def _finish(run: Run, peers: list[str], info_hash: str | None) -> str | None:
    """Stop seeding and peering, clean the temp files and deregister; never raises.

    :returns: why the tracker still serves ``info_hash`` (removing it from the
        allow-list failed), or None. A stop or clean-up that fails is a warning.
    """
    s = run.s
    alive = [h for h in peers if h not in run.unreachable]
    run.phase("stopping seeding and peering, cleaning temp files")
    # After an interruption every stop is news; after a normal end a summary will do.
    run.quiet = not run.interrupted
    roles: dict[str, list[str]] = {}
    for host, role in [(s.seeder, "seed"), *((h, "peer") for h in alive)]:
        if host:
            roles.setdefault(host, []).append(role)
    try:
        # One command per host stops its agents and removes the release's temp
        # files, beside the tracker's deregistration: each SSH round trip that
        # starts a Python on every host was a large part of a small deploy's tail.
        with ThreadPoolExecutor(max_workers=1) as pool:
            deregistering = pool.submit(register, run, info_hash, False) if info_hash else None
            try:
                result = stop_daemons(run, roles, s.tag, clean=True)
                records = [record for value in result.succeeded.values() for record in value]
                stopped = sum(1 for record in records if record.get("stopped"))
                run.phase(f"stopped {stopped} daemon(s)")
            except MurderError as exc:
                run.emit(Event("warning", f"cleanup incomplete: {exc}"))
            if deregistering:
                deregistering.result()
    except MurderError as exc:
        # The deploy token would still open the swarm: the run must not pass.
        return failure_reason(exc)
    return None


def distribute_files(
    c: Any, *, on_event: EventCallback | None = None, **overrides: Any
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
    :raises ConfigError: for missing or invalid settings.

    A peer that already holds this very release (same SHA-256) at
    ``destination_path/<tag>`` counts as installed and downloads nothing; a
    peer holding another release under that tag fails without downloading,
    unless ``force``.
    """
    run = open_run(c, on_event, **overrides)
    s = run.s
    s.require("seeder", "peers", "files_path", "destination_path", "tracker")
    assert s.seeder
    began = time.monotonic()
    report = DeployReport(tag=s.tag, hosts={h: HostReport(h) for h in s.peers})
    info: dict[str, Any] = {}
    with run.pool:
        run.phase(f"connecting to {len(s.role_hosts)} host(s)")
        own_tracker = None if s.tracker_url else s.tracker
        # Whether a peer's destination already holds the tag is the peer
        # agent's call: the same release counts as installed, another one is
        # refused before anything is downloaded (unless force).
        probe_failures = probe(run, s.role_hosts, check_dest=s.peers)
        require_reachable(run, probe_failures, s.seeder, own_tracker)
        refuse_foreign(run)
        for host, reason in probe_failures.items():
            if host in report.hosts:
                report.hosts[host].reason = reason
                run.emit(Event("host", "failed", host, {"ok": False, "reason": reason}))
        reachable = [h for h in s.role_hosts if h not in run.unreachable]
        run.phase("installing the agent")
        for host, reason in install_agent(run, reachable).items():
            if host not in report.hosts:
                raise HostError(host, f"installing the agent failed: {reason}")
            report.hosts[host].reason = f"installing the agent failed: {reason}"
            run.unreachable[host] = reason
        peers = [h for h in s.peers if not report.hosts[h].finished]
        try:
            run.phase("creating the torrent")
            announce, stats_url = tracker_urls(run)
            info = _create(run, announce)
            report.info_hash, report.sha256 = info["info_hash"], info["sha256"]
            report.size = int(info.get("size") or 0)
            if own_tracker:
                run.phase("starting the tracker")
                start_tracker_daemon(run)
            # Peers first, seeder last: every peer is in the swarm when seeding
            # starts, so each asks the seeder for its own slice (--stripe) and
            # none gets a head start that makes the seeder send pieces twice.
            watches = _start_peers(run, peers, info, report) if peers else {}
            run.phase("seeding")
            start_seed(run)
            _wait_peers(run, watches, stats_url, info, report)
        except KeyboardInterrupt:
            run.emit(Event("warning", "interrupted: stopping every agent this run started"))
            run.interrupted = True
            raise
        finally:
            still_served = _finish(run, peers, info.get("info_hash"))
    report.seconds = time.monotonic() - began
    failures = report.failures
    problems = []
    if len(failures) > s.max_failed_peers:
        lost = f"; {run.seeder_lost}" if run.seeder_lost else ""
        problems.append(
            f"{len(failures)} of {len(s.peers)} peer(s) failed "
            f"(max_failed_peers is {s.max_failed_peers}){lost}"
        )
    if still_served and s.tracker:
        problems.append(
            f"the tracker still serves info-hash {info['info_hash']} under this run's "
            "deploy token: removing it from the allow-list failed"
        )
        why = f"removing the release from the tracker's allow-list failed: {still_served}"
        failures[s.tracker] = "; ".join(filter(None, [failures.get(s.tracker), why]))
    if problems:
        raise DeployError("; ".join(problems), failures, report)
    return report


def peer_download(
    c: Any, sha256: str | None = None, *, on_event: EventCallback | None = None, **overrides: Any
) -> DeployReport:
    """Download release ``tag`` (already being seeded) on every peer and wait for it.

    The torrent is copied from the seeder's ``temp_path``; ``sha256`` is
    the tarball's digest, read from the seeder when not given. The peers
    keep seeding for ``seed_after`` seconds or until stop_peering.

    :raises DeployError: when more peers failed than ``max_failed_peers``.
    """
    run = open_run(c, on_event, **overrides)
    s = run.s
    s.require("seeder", "peers", "destination_path", "tag")
    assert s.seeder
    report = DeployReport(tag=s.tag, hosts={h: HostReport(h) for h in s.peers})
    began = time.monotonic()
    with run.pool:
        failures = probe(run, [s.seeder, *s.peers], check_dest=s.peers)
        require_reachable(run, failures, s.seeder)
        refuse_foreign(run)
        for host, reason in failures.items():
            if host in report.hosts:
                report.hosts[host].reason = reason
        peers = [h for h in s.peers if not report.hosts[h].finished]
        setup_failures = install_agent(run, peers)
        for host, reason in setup_failures.items():
            report.hosts[host].reason = f"installing the agent failed: {reason}"
        peers = [h for h in peers if h not in setup_failures]
        tarball = s.tmp(f"{s.tag}.tar")
        if not sha256:
            out = shell(
                run.conn(s.seeder), f"sha256sum -- {quote(tarball)}", "reading the release digest"
            )
            sha256 = out.stdout.split()[0]
        size = shell(
            run.conn(s.seeder), f"stat -c %s -- {quote(tarball)}", "reading the release size"
        )
        report.sha256, report.size = sha256, int(size.stdout.strip() or 0)
        info = {"sha256": sha256, "size": report.size, "info_hash": None}
        stats_url = None
        if not s.tracker_url and s.tracker:
            _, stats_url = tracker_urls(run)
        if peers:
            _download(run, peers, info, stats_url, report)
    report.seconds = time.monotonic() - began
    if len(report.failures) > s.max_failed_peers:
        lost = f"; {run.seeder_lost}" if run.seeder_lost else ""
        raise DeployError(
            f"{len(report.failures)} of {len(s.peers)} peer(s) failed{lost}",
            report.failures,
            report,
        )
    return report


def refuse_foreign(run: Run) -> None:
    """Refuse, before anything is written, a ``destination_path/<tag>`` fabmurder did not make.

    A release the peer agent installed carries a marker beside it
    (``.<tag>.sha256``); a tree without one is someone else's and is never
    replaced without ``force``. Trees with a marker are the peer agent's
    call: this very release counts as installed, another one is refused.

    :raises ConfigError: naming the hosts.
    """
    s = run.s
    foreign = sorted(h for h, digest in run.existing.items() if not digest)
    if foreign and not s.force:
        raise ConfigError(
            f"{s.destination_path}/{s.tag} already exists on {', '.join(foreign)} and was not "
            "installed by fabmurder; nothing was changed (use --force to replace it)",
            key="force",
        )


def note_seeder_loss(run: Run, report: DeployReport) -> None:
    """Name a dead seeder in the reasons of the peers that timed out, and in the run.

    Peers that lose the seeder before the swarm holds every piece can only
    time out; without this the cause would be one log away. Checked once,
    after the wait and before the cleanup removes the seeder's PID file.
    """
    s = run.s
    failed = [r for r in report.hosts.values() if r.reason and "timed out" in r.reason]
    if not failed or not s.seeder or s.seeder in run.unreachable:
        return
    pid_file = s.tmp(f"seed-{s.tag}.pid")
    try:
        data = run_agent(run.conn(s.seeder), s, "daemon", "status", "--pid-file", pid_file)
    except MurderError:
        return
    if data.get("alive") is not False or not data.get("pid"):
        return
    run.seeder_lost = (
        f"the seeder's agent on {s.seeder} (pid {data['pid']}) died during the transfer"
    )
    run.emit(Event("warning", run.seeder_lost, s.seeder))
    for r in failed:
        r.reason = f"{r.reason}; {run.seeder_lost}"
