"""Progress reports: agents tell the tracker how their deploy goes; the control host follows.

This is fabmurder's own extension of the tracker, beside the standard
announce and scrape. It lets the control host follow a whole swarm over
one channel instead of polling every peer over SSH:

- ``GET /report/<deploy token>?info_hash=..&id=..&state=..`` (with ``done``,
  ``total``, ``from_seeder``, ``from_peers``, ``uploaded``, ``installed``
  and ``error``) comes from an agent on every change of state and as a
  heartbeat every few seconds. ``id`` is the handle the control side gave
  that host (random, so one host cannot speak for another).
- ``GET /progress/<tracker token>?info_hash=<hex>&since=<seq>`` answers
  JSON: the swarm's totals, and the reports whose *state* changed after
  ``since`` (a report that merely moved bytes changes the totals only).
  A reporter silent for longer than the silence limit changes too: it is
  marked ``silent`` once, so the control host can look at that host.

Every operation is O(1) or O(what changed): totals are kept as sums, the
changes are ordered by sequence number and the silence check walks reports
in the order they were last heard from. So the control host's work per
second does not grow with the number of peers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TypedDict

from fabmurder import contract
from fabmurder.tracker.protocol import RequestError, parse_query

#: states an agent may report (the status file's states, from the host contract)
STATES = frozenset(contract.STATES)
_MAX_ERROR = 300
_MAX_DIGITS = 20


class PeerReport(TypedDict):
    """What the tracker holds of one reporter, as ``/progress`` shows it."""

    addr: str
    state: str
    installed: bool
    error: str | None
    done: int
    total: int
    from_seeder: int
    from_peers: int
    uploaded: int
    silent: bool
    seq: int


class Totals(TypedDict):
    """Sums over a swarm's reporters, kept up to date on every report."""

    reporters: int
    installed: int
    failed: int
    silent: int
    done: int
    total: int
    from_seeder: int
    from_peers: int


@dataclass(slots=True)
class Report:
    """A validated ``/report`` request."""

    info_hash: bytes
    id: str
    state: str
    installed: bool
    error: str | None
    counters: dict[str, int]


def parse_report(query: bytes) -> Report:
    """Validate the query of ``GET /report``.

    :raises RequestError: naming the first problem found.
    """
    params = {k: v[0] for k, v in parse_query(query).items()}
    info_hash = params.get(b"info_hash")
    if info_hash is None or len(info_hash) != 20:
        raise RequestError("missing or invalid info_hash")
    rid = params.get(b"id", b"")
    if not contract.valid_report_id(rid.decode("ascii", "replace")):
        raise RequestError("missing or invalid id")
    state = params.get(b"state", b"").decode("ascii", "replace")
    if state not in STATES:
        raise RequestError("invalid state")
    counters = {}
    for name in contract.REPORT_COUNTERS:
        raw = params.get(name.encode(), b"0")
        if not raw.isdigit() or len(raw) > _MAX_DIGITS:
            raise RequestError(f"invalid {name}")
        counters[name] = int(raw)
    installed = params.get(b"installed", b"0")
    if installed not in (b"0", b"1"):
        raise RequestError("invalid installed")
    error = params.get(b"error")
    if error is not None and len(error) > _MAX_ERROR:
        raise RequestError("error too long")
    return Report(
        info_hash=info_hash,
        id=rid.decode("ascii"),
        state=state,
        installed=installed == b"1",
        error=error.decode("utf-8", "replace") if error else None,
        counters=counters,
    )


def parse_since(query: bytes) -> tuple[bytes, int]:
    """Validate the query of ``GET /progress``: ``info_hash`` (40 hex digits) and ``since``.

    :raises RequestError: on a missing or malformed value.
    """
    params = {k: v[0] for k, v in parse_query(query).items()}
    raw = params.get(b"info_hash", b"")
    try:
        info_hash = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        info_hash = b""
    if len(info_hash) != 20:
        raise RequestError("info_hash must be 40 hex digits")
    since = params.get(b"since", b"0")
    if not since.isdigit() or len(since) > _MAX_DIGITS:
        raise RequestError("invalid since")
    return info_hash, int(since)


def _empty_totals() -> Totals:
    return {
        "reporters": 0,
        "installed": 0,
        "failed": 0,
        "silent": 0,
        "done": 0,
        "total": 0,
        "from_seeder": 0,
        "from_peers": 0,
    }


class SwarmProgress:
    """The reports of one swarm."""

    __slots__ = ("seq", "reports", "heard", "totals")

    def __init__(self) -> None:
        self.seq = 0
        #: id -> report, ordered by ``seq`` (the latest change of state last)
        self.reports: OrderedDict[str, PeerReport] = OrderedDict()
        #: id -> when it was last heard from, oldest first; only reporters that
        #: may still go silent (not stopped, failed or already silent)
        self.heard: OrderedDict[str, float] = OrderedDict()
        self.totals = _empty_totals()

    def _count(self, report: PeerReport, sign: int) -> None:
        totals = self.totals
        totals["installed"] += sign * report["installed"]
        totals["failed"] += sign * (report["state"] == "failed")
        totals["silent"] += sign * report["silent"]
        for name in ("done", "total", "from_seeder", "from_peers"):
            totals[name] += sign * report[name]

    def _changed(self, rid: str, report: PeerReport) -> None:
        self.seq += 1
        report["seq"] = self.seq
        self.reports[rid] = report
        self.reports.move_to_end(rid)

    def add(self, req: Report, addr: str, now: float) -> None:
        """Apply one report from ``addr``."""
        old = self.reports.get(req.id)
        new: PeerReport = {
            "addr": addr,
            "state": req.state,
            "installed": req.installed,
            "error": req.error,
            "silent": False,
            "seq": old["seq"] if old else 0,
            **req.counters,  # type: ignore[typeddict-item]
        }
        if old is None:
            self.totals["reporters"] += 1
        else:
            self._count(old, -1)
        self._count(new, 1)
        moved = old is None or any(
            old[k] != new[k] for k in ("addr", "state", "installed", "error", "silent")
        )
        if moved:
            self._changed(req.id, new)
        else:
            self.reports[req.id] = new
        if req.state in ("stopped", "failed"):
            self.heard.pop(req.id, None)
        else:
            self.heard[req.id] = now
            self.heard.move_to_end(req.id)

    def mark_silent(self, deadline: float) -> int:
        """Mark reporters last heard before ``deadline`` silent (once each); count them."""
        marked = 0
        heard = self.heard
        while heard:
            rid, when = next(iter(heard.items()))
            if when >= deadline:
                break
            del heard[rid]
            old = self.reports[rid]
            report: PeerReport = {**old, "silent": True}
            self._count(old, -1)
            self._count(report, 1)
            self._changed(rid, report)
            marked += 1
        return marked

    def since(self, seq: int) -> dict[str, PeerReport]:
        """Return the reports whose state changed after ``seq``, oldest change first."""
        out: list[tuple[str, PeerReport]] = []
        for rid in reversed(self.reports):
            report = self.reports[rid]
            if report["seq"] <= seq:
                break
            out.append((rid, report))
        return dict(reversed(out))


class Progress:
    """The reports of every swarm, capped like the swarms themselves."""

    def __init__(self, max_swarms: int, max_reporters: int) -> None:
        self.max_swarms = max_swarms
        self.max_reporters = max_reporters
        self.swarms: dict[bytes, SwarmProgress] = {}
        self.reports = 0

    def add(self, req: Report, addr: str, now: float) -> None:
        """Apply one report.

        :raises RequestError: when a cap is reached.
        """
        self.reports += 1
        swarm = self.swarms.get(req.info_hash)
        if swarm is None:
            if len(self.swarms) >= self.max_swarms:
                raise RequestError("tracker is full: too many swarms")
            swarm = self.swarms[req.info_hash] = SwarmProgress()
        if req.id not in swarm.reports and len(swarm.reports) >= self.max_reporters:
            raise RequestError("too many reporters in the swarm")
        swarm.add(req, addr, now)

    def mark_silent(self, deadline: float) -> int:
        """Mark every swarm's reporters last heard before ``deadline`` silent."""
        return sum(swarm.mark_silent(deadline) for swarm in self.swarms.values())

    def view(self, info_hash: bytes, since: int) -> dict[str, object]:
        """Return the ``/progress`` reply for one swarm."""
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            return {"seq": 0, "totals": _empty_totals(), "changes": {}}
        return {"seq": swarm.seq, "totals": dict(swarm.totals), "changes": swarm.since(since)}

    def keep_only(self, allowed: frozenset[bytes]) -> None:
        """Forget the reports of swarms whose info-hash left the allow-list."""
        for info_hash in [h for h in self.swarms if h not in allowed]:
            del self.swarms[info_hash]
