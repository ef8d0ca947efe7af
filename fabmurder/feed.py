"""The tracker's progress feed, as the watch follows it: one long poll for the whole swarm.

The peer agents report their progress to fabmurder's tracker (``/report``,
see :mod:`fabmurder.tracker.progress`). The watch keeps one long poll of the
tracker's ``/progress`` open through the tracker host (the host command
``stats --wait``), so following N peers costs one process on one host
however large N is, where reading every peer's status over SSH cost one
process per peer and poll.

The feed only says *when* to look at a peer: one whose report says it
installed, failed or stopped, or that the tracker marked silent. The watch
then reads that peer's status once over SSH, and that read decides, as it
always did. A feed that fails (an older tracker, a tracker that died) is
dropped, and the watch polls every peer again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabric import Connection

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.contract import parse_reply
from fabmurder.errors import HostError
from fabmurder.remote import QUIET, agent_command, failure_reason, host_name

if TYPE_CHECKING:
    from fabmurder.tracker.progress import PeerReport

#: seconds the tracker host's command may take beyond its wait before the poll counts as hung
SLACK = 20.0
#: the longest a feed answer gathers changes, in seconds (see Feed.command)
GATHER = 1.0
#: pending peers per second of gathering: 1,000 pending wait the whole GATHER
GATHER_PEERS = 1000
#: seconds without a report after which the tracker marks a peer silent (three of
#: its heartbeats; fabmurder starts its tracker with it)
SILENCE = 6.0


class FeedError(HostError):
    """The tracker's ``/progress`` could not be read, or answered nonsense."""


@dataclass
class Feed:
    """One swarm's ``/progress``: where it is read, and how far the watch has read it."""

    #: the tracker's ``/progress`` URL (under the tracker token)
    url: str
    info_hash: str
    #: host -> the id its agent reports under
    report_ids: Mapping[str, str]
    #: the sequence number of the last change taken in
    seq: int = 0
    #: the tracker's own numbers of the swarm, as last read
    swarm: dict[str, object] = field(default_factory=dict)
    #: reads that failed in a row (the watch drops the feed after a few)
    failures: int = 0

    def __post_init__(self) -> None:
        self.hosts = {rid: host for host, rid in self.report_ids.items()}

    def command(self, s: Settings, wait: float, pending: int = 0) -> str:
        """Return the tracker host's command: a long poll past the last change read.

        With ``pending`` peers still to settle, an answer gathers the changes
        of ``pending / GATHER_PEERS`` seconds (at most GATHER): the feed's
        answers a second stay bounded however large the fleet, and the last
        few peers' news comes at once.
        """
        url = f"{self.url}?info_hash={self.info_hash.lower()}&since={self.seq}"
        gather = min(GATHER, pending / GATHER_PEERS, wait)
        args = ["--url", url, "--wait", f"{wait:.2f}", "--while-seq", self.seq]
        if gather >= 0.01:
            args += ["--gather", f"{gather:.2f}"]
        return agent_command(s, "stats", *args)

    def read(self, conn: Connection, s: Settings, wait: float, pending: int = 0) -> dict[str, Any]:
        """Run one long poll on the tracker host (see :meth:`command`); return its JSON.

        :raises FeedError: when the command fails or prints no object.
        """
        result = conn.run(self.command(s, wait, pending), timeout=wait + SLACK, **QUIET)
        if result.exited != 0:
            raise FeedError(host_name(conn), f"progress: {failure_reason(result)}", result)
        doc = parse_reply(result.stdout)
        if not isinstance(doc, dict):
            raise FeedError(host_name(conn), "progress: the tracker printed no JSON object")
        return doc

    def take(self, doc: Mapping[str, Any]) -> dict[str, PeerReport]:
        """Take in one ``/progress`` reply; return host -> its report, for each that changed.

        Reports under ids this run did not hand out are ignored.

        :raises FeedError: on a reply that is not a ``/progress`` document.
        """
        seq, changes, totals = doc.get("seq"), doc.get("changes"), doc.get("totals")
        if (
            not isinstance(seq, int)
            or not isinstance(changes, dict)
            or not isinstance(totals, dict)
        ):
            raise FeedError("tracker", f"progress: not a /progress reply: {sorted(doc)}")
        if seq < self.seq:
            # the tracker restarted and lost the reports: read them all again
            self.seq = 0
            return {}
        self.seq = seq
        swarm = doc.get("swarm")
        self.swarm = dict(swarm) if isinstance(swarm, dict) else {}
        out: dict[str, PeerReport] = {}
        for rid, report in changes.items():
            host = self.hosts.get(rid)
            if (
                host is not None
                and isinstance(report, dict)
                and report.get("state") in contract.STATES
            ):
                out[host] = report  # type: ignore[assignment]
        return out


def settled(report: PeerReport) -> bool:
    """Return True for a report after which only the peer's own status can tell more."""
    return bool(report["installed"] or report["silent"] or report["state"] in contract.FINAL_STATES)
