"""The peers' side of a run: one preparation before any agent starts, and one verdict after.

:func:`distribute_files` and :func:`peer_download` (in
:mod:`fabmurder.pipeline`) share both, so they refuse, report, install and
judge with the same events and the same messages. ``distribute_files``
first confirms each peer the tracker reported installed from that peer's
``finish`` reply (:func:`confirm`), so that :func:`judge` counts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from fabmurder.errors import DeployError, HostError
from fabmurder.install import install_agent
from fabmurder.plan import Plan
from fabmurder.remote import ConnectionPool, HostResults, failure_reason
from fabmurder.report import DeployReport
from fabmurder.watch import Watch, apply_status, verdict_event

if TYPE_CHECKING:
    from fabmurder.contract import FinishReply


def prepare(
    pool: ConnectionPool, plan: Plan, report: DeployReport, hosts: Iterable[str]
) -> list[str]:
    """Get the peers ready: fail the unreachable in the report, install the agent.

    The plan has refused a foreign destination already (:func:`~fabmurder.plan.make_plan`).

    :param hosts: the role hosts that need the agent (the peers among them
        that fail are failed in the report; any other host raises).
    :returns: the peers to start, in ``murder.peers`` order.
    :raises HostError: when a host other than a peer cannot get the agent.
    """
    for host, reason in plan.unreachable.items():
        if host in report.hosts:
            report.fail(host, reason)
    reachable = [h for h in hosts if h not in plan.unreachable]
    report.phase("installing the agent")
    stamps = plan.found.stamps
    for host, reason in install_agent(pool, plan.s, stamps, reachable, report.emit).items():
        if host not in report.hosts:
            raise HostError(host, f"installing the agent failed: {reason}")
        report.fail(host, f"installing the agent failed: {reason}")
    return [h for h in plan.s.peers if not report.hosts[h].finished]


def confirm(
    watches: Mapping[str, Watch], replies: HostResults[FinishReply], report: DeployReport
) -> None:
    """Give each peer the watch took as installed on the tracker's word its verdict.

    The verdict is the peer agent's last status, which ``finish`` read
    after stopping it (``replies``: host -> its reply, or why it failed),
    applied as a poll's is (:func:`fabmurder.watch.apply_status`): its
    report's times, counters and CPU come from it. A peer whose status does
    not say installed, whose ``finish`` failed or printed no status, or that
    ``finish`` did not reach, fails, with an event.
    """
    now = time.monotonic()
    for host, w in watches.items():
        if not w.provisional:
            continue
        w.provisional = False
        value = replies.get(host)
        if value is None:
            why = "finish did not run there"
        elif isinstance(value, BaseException):
            why = failure_reason(value)
        elif (final := value.get("statuses", {}).get("peer")) is None:
            why = "finish printed no status of the peer agent"
        elif (status := final["status"]) is None:
            why = final["error"] or "its status file could not be read"
        else:
            apply_status(w, {"status": status, "alive": False, "error": None}, now)
            if w.report.ok:
                report.emit(verdict_event(w.report))
                continue
            says = status["state"] + (f": {status['error']}" if status["error"] else "")
            report.fail(host, f"the tracker reported it installed, but its status says {says}")
            continue
        report.fail(host, f"could not confirm the install: {why}")


def judge(
    plan: Plan,
    report: DeployReport,
    seeder_lost: str | None = None,
    still_served: str | None = None,
) -> DeployReport:
    """Return ``report`` when at most ``max_failed_peers`` failed and the tracker let go of it.

    :param seeder_lost: how the seeder died, when it did: named in the message.
    :param still_served: why the tracker still serves the release under the
        run's deploy token (its deregistration failed), which fails the run.
    :raises DeployError: with ``.failures`` and ``.report``, naming the
        limit and, when it died, the seeder.
    """
    s = plan.s
    failures = report.failures
    problems = []
    if len(failures) > s.max_failed_peers:
        lost = f"; {seeder_lost}" if seeder_lost else ""
        problems.append(
            f"{len(failures)} of {len(s.peers)} peer(s) failed "
            f"(max_failed_peers is {s.max_failed_peers}){lost}"
        )
    if still_served and s.tracker:
        problems.append(
            f"the tracker still serves info-hash {report.info_hash} under this run's "
            "deploy token: removing it from the allow-list failed"
        )
        why = f"removing the release from the tracker's allow-list failed: {still_served}"
        failures[s.tracker] = "; ".join(filter(None, [failures.get(s.tracker), why]))
    if problems:
        raise DeployError("; ".join(problems), failures, report)
    return report
