"""Wait for the peers: poll their status files and the tracker until each is done.

Polls run on their own thread pool so that one host that stops answering
never holds the others back, and a poll still pending is never sent again.
A peer is done when its status file says ``installed``, or failed when the
file says so, when its agent exited without installing, when it stops
answering, or when ``timeout`` runs out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from fabric import Connection

from fabmurder.remote import QUIET, failure_reason, run_agent
from fabmurder.report import Event, HostReport
from fabmurder.roles import POLL_TIMEOUT, Run, quote

#: seconds the control side waits beyond ``timeout`` before it gives up on a peer
GRACE = 30.0
#: the tracker's swarm numbers only decorate the progress line: read them at
#: most this often (each read starts a Python on the tracker host)
STATS_INTERVAL = 1.0
#: the shortest time between two polls of one peer: right after the start
#: (the gap then grows by this much per poll) and when its end is due
FAST_POLL = 0.1


@dataclass
class Watch:
    """Per-peer bookkeeping of the wait loop."""

    report: HostReport
    pid: int | None = None
    started: float = 0.0
    polled: float = 0.0
    future: Future[Any] | None = None
    submitted: float = 0.0
    #: polls answered so far, and the download rate the last two of them showed
    polls: int = 0
    rate: float = 0.0
    measured: float = 0.0

    def next_poll(self, interval: float, size: int, fast: float = FAST_POLL) -> float:
        """Return when to poll this peer next: sooner when it should be about done.

        A fixed interval made a small release wait most of a poll_interval
        after its last peer was done. Early polls come FAST_POLL apart, the
        gap growing by FAST_POLL each time up to ``interval``; once the
        download rate is known, the next poll comes when the rest should be
        in, and never later than ``interval``.
        """
        r = self.report
        if r.state in ("verifying", "extracting") or (size and r.bytes >= size):
            delay = fast
        elif self.rate > 0:
            delay = (size - r.bytes) / self.rate
        else:
            delay = fast * (self.polls + 1)
        return self.polled + min(interval, max(fast, delay))


def read_status(run: Run, conn: Connection, pid: int | None) -> tuple[dict[str, Any] | None, bool]:
    """Return one peer's status file (None if unreadable yet) and whether its agent lives."""
    s = run.s
    status_file = s.tmp(f"peer-{s.tag}.status.json")
    command = f"cat -- {quote(status_file)} 2>/dev/null; echo; echo '#'"
    if pid:
        command += f"; kill -0 {int(pid)} 2>/dev/null && echo alive || echo dead"
    result = conn.run(command, timeout=POLL_TIMEOUT, **QUIET)
    text, _, tail = result.stdout.rpartition("#")
    try:
        status = json.loads(text) if text.strip() else None
    except ValueError:
        status = None  # caught mid-rewrite; the next poll reads a whole file
    return (status if isinstance(status, dict) else None), "dead" not in tail


def log_tail(run: Run, host: str) -> str:
    """Return the last line of a peer agent's log, for a failure reason."""
    s = run.s
    try:
        out = run.conn(host).run(
            f"tail -n 3 -- {quote(s.tmp(f'peer-{s.tag}.log'))}", timeout=30, **QUIET
        )
    except Exception:  # the reason is best effort; the host is failed either way
        return ""
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def apply_status(
    w: Watch, status: dict[str, Any] | None, alive: bool, now: float, run: Run
) -> None:
    """Update a peer's report from its status file and liveness."""
    r = w.report
    if status:
        r.state = str(status.get("state", r.state))
        r.bytes = int(status.get("done") or 0)
        r.from_seeder = int(status.get("from_seeder") or 0)
        r.from_peers = int(status.get("from_peers") or 0)
        r.hash_failures = int(status.get("hash_failures") or 0)
        for key in ("started_at", "downloaded_at", "installed_at", "cpu_seconds"):
            value = status.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(r, key, float(value))
        if status.get("installed"):
            r.ok = True
            if not status.get("downloaded_at") and not r.from_seeder + r.from_peers:
                # the agent found this very release in place: nothing was sent
                r.state, r.bytes, r.seconds = "already installed", 0, 0.0
                return
            started, installed = status.get("started_at"), status.get("installed_at")
            if isinstance(started, int | float) and isinstance(installed, int | float):
                r.seconds = max(0.0, float(installed) - float(started))
            else:
                r.seconds = now - w.started
            return
        if r.state in ("failed", "stopped") and status.get("error"):
            r.reason = str(status["error"])
            return
    if not alive:
        r.reason = f"the peer agent exited without installing ({r.state})"
        tail = log_tail(run, r.host)
        if tail:
            r.reason += f": {tail}"


def watch(run: Run, watches: dict[str, Watch], stats_url: str | None, info: dict[str, Any]) -> None:
    """Poll the peers (and the tracker's stats) until each is installed or failed."""
    s = run.s
    deadline = time.monotonic() + s.timeout + GRACE
    size = int(info.get("size") or 0)
    swarm: dict[str, Any] = {}
    stats: Future[Any] | None = None
    stats_polled = 0.0
    pool = ThreadPoolExecutor(max_workers=min(s.parallel, len(watches) + 1))
    try:
        while True:
            now = time.monotonic()
            for w in watches.values():
                if not w.report.finished:
                    _collect(run, w, now)
            if stats is not None and stats.done():
                swarm = swarm_stats(stats, info.get("info_hash")) or swarm
                stats = None
            pending = [w for w in watches.values() if not w.report.finished]
            _progress(run, watches, size, swarm)
            if not pending:
                return
            if now >= deadline:
                for w in pending:
                    why = f"{w.report.state}, {w.report.bytes} of {size} bytes"
                    _fail(run, w, f"timed out after {s.timeout:.0f} s ({why})")
                return
            # Polling slows down on large fleets so the control machine's SSH
            # traffic stays modest: about 200 status reads a second at most.
            fast = max(FAST_POLL, len(pending) / 200)
            interval = max(s.poll_interval, fast)
            due = []
            for w in pending:
                if w.future is not None:
                    continue
                at = w.next_poll(interval, size, fast)
                if now < at:
                    due.append(at - now)
                    continue
                w.polled = w.submitted = now
                w.future = pool.submit(read_status, run, run.conn(w.report.host), w.pid)
            stats_due = now - stats_polled >= max(interval, STATS_INTERVAL)
            if stats_url and s.tracker and stats is None and stats_due:
                stats_polled = now
                stats = pool.submit(run_agent, run.conn(s.tracker), s, "stats", "--url", stats_url)
            wait_for = min([s.poll_interval, 0.5, *due])
            pause(max(0.01, wait_for), [*(w.future for w in pending), stats])
    finally:
        # A poll stuck on a dead host must not hold the run; closing the pool's
        # connections later unblocks its thread.
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(run: Run, w: Watch, now: float) -> None:
    """Take in a finished poll of one peer, or fail the peer if its poll hangs."""
    if w.future is None:
        return
    if not w.future.done():
        # A host that cannot answer one status read in half the peer timeout
        # has lost its link or its sshd: fail it now, not at the deadline.
        hang = min(POLL_TIMEOUT, max(5.0, run.s.timeout / 2))
        if now - w.submitted > hang:
            run.unreachable[w.report.host] = "no answer"
            _fail(run, w, f"no answer for {hang:.0f} s during the download")
        return
    future, w.future = w.future, None
    try:
        status, alive = future.result()
    except Exception as exc:
        run.unreachable[w.report.host] = failure_reason(exc)
        _fail(run, w, f"lost contact during the download: {failure_reason(exc)}")
        return
    before, before_at = w.report.bytes, w.measured
    apply_status(w, status, alive, now, run)
    w.polls += 1
    if w.report.bytes > before and before_at:
        w.rate = (w.report.bytes - before) / max(now - before_at, 1e-3)
    w.measured = now
    if w.report.finished:
        r = w.report
        message = r.state if r.state == "already installed" else "installed"
        data = {"ok": r.ok, "reason": r.reason, "report": r, "quiet": r.ok}
        run.emit(Event("host", message if r.ok else "failed", r.host, data))


def _fail(run: Run, w: Watch, reason: str) -> None:
    w.report.reason = reason
    run.emit(Event("host", "failed", w.report.host, {"ok": False, "reason": reason}))


def _progress(run: Run, watches: dict[str, Watch], size: int, swarm: dict[str, Any]) -> None:
    reports = [w.report for w in watches.values()]
    done = sum(1 for r in reports if r.ok)
    failed = sum(1 for r in reports if r.reason is not None and not r.ok)
    data = {
        "done": done,
        "failed": failed,
        "total": len(reports),
        "bytes": sum(size if r.ok else r.bytes for r in reports),
        "bytes_total": size * len(reports),
        "swarm": swarm,
    }
    run.emit(Event("progress", data=data))


def pause(seconds: float, futures: Sequence[Future[Any] | None]) -> None:
    """Wait up to ``seconds`` or until any poll in ``futures`` answers."""
    live = [f for f in futures if f is not None]
    if live:
        wait(live, timeout=seconds, return_when=FIRST_COMPLETED)
    else:
        time.sleep(seconds)  # pacing between poll rounds, not synchronisation


def swarm_stats(future: Future[Any], info_hash: str | None) -> dict[str, Any] | None:
    """Return the tracker's stats of this torrent from a finished stats poll, or None."""
    try:
        data = future.result()
    except Exception:  # the tracker's numbers are decoration; peers' status files decide
        return None
    swarms = data.get("swarms") if isinstance(data, dict) else None
    if not isinstance(swarms, dict) or not info_hash:
        return None
    entry = swarms.get(info_hash.lower()) or swarms.get(info_hash.upper())
    return entry if isinstance(entry, dict) else None
