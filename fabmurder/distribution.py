"""The distribution of one release: pack it, start the peers and the seeder, wait, finish.

:func:`distribute` is the whole of ``distribute_files`` over a pool the
caller holds (``releases.deploy`` runs it, then publish and cleanup, over
the same connections); its stages are here too, for the function layer's
single steps (``create_torrent``, ``peer_download``). Every stage reads the
run's :class:`~fabmurder.plan.Plan` and writes only the run's
:class:`~fabmurder.report.DeployReport`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

from fabmurder import contract, daemons, peers, tracker_control
from fabmurder.config import Settings
from fabmurder.errors import HostError, MurderError
from fabmurder.plan import Plan, make_plan
from fabmurder.remote import ConnectionPool, HostResults, failure_reason, run_agent, sftp_path
from fabmurder.report import DeployReport, Event, EventCallback, HostReport, ignore
from fabmurder.upload import upload_local
from fabmurder.watch import Verdict, Watch, watch

if TYPE_CHECKING:
    from fabmurder.contract import CreateInfo, FinishReply


def create(pool: ConnectionPool, plan: Plan, emit: EventCallback) -> CreateInfo:
    """Pack the release on the seeder and make its torrent, registered with the tracker."""
    s = plan.s
    assert s.seeder
    src = upload_local(pool, s) if s.local_path else s.files_path
    args: list[object] = ["--src", src, "--out-dir", s.temp_path, "--tag", s.tag]
    args += ["--announce", plan.announce]
    # Without a configured size, create picks one for the release's size and
    # the number of peers (more, smaller pieces for many peers).
    args += ["--piece-size", s.piece_size] if s.piece_size else ["--peers", max(1, len(s.peers))]
    if s.layout == "tree":
        args += ["--layout", "tree"]
    reply = run_agent(pool.get(s.seeder), s, "create", *args)  # it makes temp_path
    for key in ("info_hash", "sha256", "torrent"):
        if not reply.get(key):
            raise HostError(s.seeder, f"create printed no {key}: {reply}")
    info = cast("CreateInfo", reply)
    tracker_control.register(pool, s, info["info_hash"], plan.deploy_token)
    message = f"torrent {info['info_hash']} ({info.get('size', 0)} bytes)"
    emit(Event("host", message, s.seeder, {"ok": True, "create": info}))
    return info


def start_peers(
    pool: ConnectionPool, plan: Plan, hosts: list[str], sha256: str, report: DeployReport
) -> dict[str, Watch]:
    """Start the peer agents on ``hosts``; return the watch of each that started."""
    s = plan.s
    assert s.seeder
    with tempfile.TemporaryDirectory(prefix="fabmurder-") as tmp:
        torrent = Path(tmp) / contract.torrent(s.tag)
        pool.get(s.seeder).get(sftp_path(s.tmp(contract.torrent(s.tag))), local=str(torrent))
        report.phase(f"starting {len(hosts)} peer(s)")
        started = time.monotonic()
        result = pool.fan_out(
            hosts, lambda conn: daemons.start_peer(pool, plan, conn, torrent, sha256)
        )
    for host, reason in result.failed.items():
        report.fail(host, f"could not start the peer agent: {reason}")
    # polled=started: the first poll comes FAST_POLL after the start, not at once
    ok = result.succeeded  # once: each reading builds the dict anew (N² at 1,000 peers)
    return {
        host: Watch(report.hosts[host], started=started, polled=started)
        for host in hosts
        if host in ok
    }


def wait(
    pool: ConnectionPool,
    plan: Plan,
    watches: dict[str, Watch],
    report: DeployReport,
    verdict: Verdict = "poll",
) -> str | None:
    """Wait for the started peers to install the release or fail; return a dead seeder's story.

    :param verdict: the watch's (:data:`fabmurder.watch.Verdict`): ``"finish"``
        only where :func:`finish` and :func:`fabmurder.peers.confirm` follow.
    """
    if not watches:
        return None
    report.phase(f"downloading on {len(watches)} peer(s)")
    watch(pool, plan, watches, report.size, report, verdict=verdict)
    return seeder_loss(pool, plan, report)


def seeder_loss(pool: ConnectionPool, plan: Plan, report: DeployReport) -> str | None:
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


def finish(
    pool: ConnectionPool, plan: Plan, hosts: list[str], report: DeployReport, quiet: bool
) -> tuple[HostResults[FinishReply], str | None]:
    """Stop seeding and peering on ``hosts``, clean the temp files and deregister; never raises.

    :param quiet: after a normal end a summary will do; after an
        interruption every stop is news.
    :returns: each host's ``finish`` reply (with its agents' last status),
        or why it failed; and why the tracker still serves the release
        (removing it from the allow-list failed), or None. A stop or
        clean-up that fails is a warning.
    """
    s = plan.s
    report.phase("stopping seeding and peering, cleaning temp files")
    roles: dict[str, list[str]] = {}
    for host, role in [(s.seeder, "seed"), *((h, "peer") for h in hosts)]:
        if host:
            roles.setdefault(host, []).append(role)
    info_hash = report.info_hash
    replies: HostResults[FinishReply] = HostResults()
    try:
        # One command per host stops its agents and removes the release's temp
        # files, beside the tracker's deregistration: each SSH round trip that
        # starts a Python on every host was a large part of a small deploy's tail.
        with ThreadPoolExecutor(max_workers=1) as side:
            deregistering = (
                side.submit(tracker_control.deregister, pool, s, info_hash) if info_hash else None
            )
            try:
                replies = daemons.finish_on(pool, s, roles, s.tag, clean=True)
                result = daemons.stopped(replies, roles, report.emit, clean=True, quiet=quiet)
                records = [r for value in result.succeeded.values() for r in value]
                report.phase(f"stopped {sum(1 for r in records if r.get('stopped'))} daemon(s)")
            except MurderError as exc:
                report.emit(Event("warning", f"cleanup incomplete: {exc}"))
            if deregistering:
                deregistering.result()
    except MurderError as exc:
        # The deploy token would still open the swarm: the run must not pass.
        return replies, failure_reason(exc)
    return replies, None


def distribute(
    pool: ConnectionPool,
    s: Settings,
    on_event: EventCallback | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> DeployReport:
    """Run :func:`distribute_files` for the settings ``s`` over ``pool``, which the caller holds.

    :param on_plan: called with the run's plan once it is made (the deploy
        flow hands it to its hooks).
    """
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
    if on_plan:
        on_plan(plan)
    hosts = peers.prepare(pool, plan, report, s.role_hosts)
    watches: dict[str, Watch] = {}
    seeder_lost = None
    interrupted = False
    try:
        report.phase("creating the torrent")
        info = create(pool, plan, report.emit)
        report.info_hash, report.sha256 = info["info_hash"], info["sha256"]
        report.size = int(info.get("size") or 0)
        if plan.own_tracker and plan.tracker_token:
            report.phase("starting the tracker")
            address = plan.address(plan.own_tracker)
            tracker_control.start(pool, s, address, plan.tracker_token, report.emit)
        # Peers first, seeder last: every peer is in the swarm when seeding
        # starts, so each asks the seeder for its own slice (--stripe) and
        # none gets a head start that makes the seeder send pieces twice.
        watches = start_peers(pool, plan, hosts, info["sha256"], report) if hosts else {}
        report.phase("seeding")
        daemons.start_seed(pool, plan, report.emit)
        # finish reads every peer's last status: the feed's word that one installed is enough here
        seeder_lost = wait(pool, plan, watches, report, verdict="finish")
    except KeyboardInterrupt:
        report.emit(Event("warning", "interrupted: stopping every agent this run started"))
        interrupted = True
        raise
    finally:
        reachable = [h for h in hosts if not (h in watches and watches[h].lost)]
        replies, still_served = finish(pool, plan, reachable, report, quiet=not interrupted)
        peers.confirm(watches, replies, report)
    report.seconds = time.monotonic() - began
    return peers.judge(plan, report, seeder_lost, still_served)
