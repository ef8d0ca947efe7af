"""The watch: follow the started peers until each has installed the release or failed.

With fabmurder's own tracker the peers report to it, and the watch follows
them all through one long poll of the tracker's ``/progress``
(:mod:`fabmurder.feed`); a peer is read over SSH only when its report says
it is done, failed or stopped, when the tracker lost its reports, or while
it has not reported at all. Without a feed, every peer is polled.

Who gives an installed peer its verdict is the caller's explicit choice
(:data:`Verdict`). ``"poll"``: its own status, read over SSH as above.
``"finish"`` (``distribute``, whose ``finish`` reads every peer's status
anyway): a peer the feed reports installed is taken as installed
*provisionally* (:attr:`Watch.provisional`), with no read of its own, and
the caller must confirm it from ``finish``'s reply
(:func:`fabmurder.peers.confirm`); until then it is not ``ok`` in the
report. A peer the feed reports failed, stopped or silent is still read
over SSH, for its reason and log tail, and without a feed every peer is
polled, whichever the verdict.

Each peer is read through the host command ``poll`` (its status file,
checked by the host contract's parser, and whether its agent's PID file
still names a live process of ours). A poll waits on the host for the
agent's end for up to one poll interval, so the end of a download is seen
at once and a poll covers a whole interval. Polls run on their own thread
pool so that one host that stops answering never holds the others back,
and a poll still pending is never sent again. A peer is done when its
status says ``installed``, or failed when it says so, when its agent
exited without installing, when it stops answering, or when ``timeout``
runs out. What the watch learns goes into the run's report (and, for a
host it lost contact with, into that host's :class:`Watch`).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fabric import Connection

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.errors import HostError
from fabmurder.feed import SILENCE, Feed, settled
from fabmurder.plan import Plan
from fabmurder.remote import (
    POLL_TIMEOUT,
    QUIET,
    ConnectionPool,
    agent_command,
    failure_reason,
    quote,
    run_agent,
)
from fabmurder.report import DeployReport, Event, HostReport

if TYPE_CHECKING:
    from fabmurder.contract import PollReply

#: seconds the control side waits beyond ``timeout`` before it gives up on a peer
GRACE = 30.0
#: the tracker's swarm numbers only decorate the progress line: read them at
#: most this often (each read starts a Python on the tracker host)
STATS_INTERVAL = 1.0
#: the shortest time between two polls of one peer: right after the start
#: (the gap then grows by this much per poll) and when its end is due
FAST_POLL = 0.1
#: with a feed, a peer the tracker has not heard from is read over SSH this often
UNHEARD = 5.0
#: the progress line sums every peer: it is drawn at most this often (and at the end)
PROGRESS_INTERVAL = 0.5
#: seconds between the watch's sweeps over every peer for verdicts reached elsewhere
SWEEP = 5.0
#: failed reads of the feed in a row after which the watch polls every peer instead
FEED_TRIES = 3
#: who says a peer installed: its status read by ``poll``, or (with a feed) ``finish``'s reply
Verdict = Literal["poll", "finish"]


@dataclass
class Watch:
    """Per-peer bookkeeping of the wait loop."""

    report: HostReport
    started: float = 0.0
    polled: float = 0.0
    future: Future[PollReply] | None = None
    #: when the pending poll began to run on its thread (0 while it waits for one)
    running: float = 0.0
    #: seconds the pending poll may wait on the host for the agent's end (twice
    #: that when the end looks due: see :func:`fabmurder.host.statusfile.poll`)
    wait: float = 0.0
    #: polls answered so far, and the download rate the last two of them showed
    polls: int = 0
    rate: float = 0.0
    measured: float = 0.0
    #: why the watch lost contact with the host, when it did
    lost: str | None = None
    #: with a feed: when its report last changed (0: never), whether that
    #: change asks for a read of its status, and whether the tracker said it
    #: went silent (its silence counts towards "no answer")
    heard: float = 0.0
    due: bool = False
    silent: bool = False
    #: with the verdict "finish": the feed reported it installed, and the watch
    #: took its word; the report says so only once finish's reply confirms it
    provisional: bool = False

    @property
    def settled(self) -> bool:
        """Return True once the watch has nothing more to learn of this peer."""
        return self.provisional or self.report.finished

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


def poll_command(s: Settings, wait: float) -> str:
    """Return the command that reads one peer agent's status and liveness."""
    return agent_command(
        s, "poll",
        "--status-file", s.tmp(contract.status_file("peer", s.tag)),
        "--pid-file", s.tmp(contract.pid_file("peer", s.tag)),
        "--wait", f"{wait:.2f}",
    )  # fmt: skip


def read_status(conn: Connection, s: Settings, w: Watch) -> PollReply:
    """Poll one peer (the command runs on a thread of the watch's pool)."""
    w.running = time.monotonic()
    # a poll waits up to twice its wait when the agent's end looks due (host side)
    result = conn.run(poll_command(s, w.wait), timeout=POLL_TIMEOUT + 2 * w.wait, **QUIET)
    if result.exited != 0:
        raise HostError(w.report.host, f"poll: {failure_reason(result)}", result)
    return contract.parse_poll(result.stdout)


def log_tail(pool: ConnectionPool, s: Settings, host: str) -> str:
    """Return the last line of a peer agent's log, for a failure reason."""
    path = quote(s.tmp(contract.log_file("peer", s.tag)))
    try:
        out = pool.get(host).run(f"tail -n 3 -- {path}", timeout=30, **QUIET)
    except Exception:  # the reason is best effort; the host is failed either way
        return ""
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def apply_status(w: Watch, reply: PollReply, now: float) -> bool:
    """Update a peer's report from a poll; return True if its agent exited without a verdict."""
    r = w.report
    status = reply["status"]
    if status is not None:
        r.state = status["state"]
        r.bytes, r.hash_failures = status["done"], status["hash_failures"]
        r.from_seeder, r.from_peers = status["from_seeder"], status["from_peers"]
        r.started_at, r.downloaded_at = status["started_at"], status["downloaded_at"]
        r.installed_at, r.cpu_seconds = status["installed_at"], status.get("cpu_seconds")
        if status["installed"]:
            r.ok = True
            if not status["downloaded_at"] and not r.from_seeder + r.from_peers:
                # the agent found this very release in place: nothing was sent
                r.state, r.bytes, r.seconds = "already installed", 0, 0.0
            elif status["installed_at"] is not None:
                r.seconds = max(0.0, status["installed_at"] - status["started_at"])
            else:
                r.seconds = now - w.started
            return False
        if r.state in contract.FINAL_STATES and status["error"]:
            r.reason = status["error"]
            return False
    if reply["alive"]:
        return False
    r.reason = f"the peer agent exited without installing ({r.state})"
    return True


def watch(
    pool: ConnectionPool,
    plan: Plan,
    watches: Mapping[str, Watch],
    size: int,
    report: DeployReport,
    *,
    verdict: Verdict = "poll",
) -> None:
    """Follow the peers (``watches``: host -> its Watch) until each is installed or failed.

    A wake-up costs what happened since the last one, not the fleet's size:
    the peers still to settle, the polls in flight and the polls due are
    kept apart (:class:`_Schedule`), and the progress line, which sums every
    peer, is drawn at most every PROGRESS_INTERVAL.

    :param verdict: ``"finish"`` to take the feed's word for an installed
        peer, provisionally (see the module docstring): the caller then owes
        each :attr:`Watch.provisional` peer its confirmation.
    """
    s = plan.s
    # The agents' own clocks end first: a peer that never got a byte fails after its
    # first-byte wait (the timeout, plus the start phase), one that got some, after
    # the timeout from then. This is the backstop for a peer that cannot say so.
    waited = plan.first_byte_wait
    deadline = time.monotonic() + waited + GRACE
    swarm: dict[str, object] = {}
    stats: Future[dict[str, object]] | None = None
    stats_polled = 0.0
    feed = _open_feed(plan, report)
    following: Future[dict[str, Any]] | None = None
    if feed is not None:
        # a peer's silence counts from here: starting a large fleet takes a while
        begun = time.monotonic()
        for w in watches.values():
            w.polled = max(w.polled, begun)
    schedule = _Schedule(watches, size, s.poll_interval, feed is not None)
    tally = _Tally(watches, size)
    workers = min(s.parallel, len(watches) + 2)
    threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="murder-watch")
    drawn = 0.0
    try:
        while True:
            now = time.monotonic()
            for w in list(schedule.inflight.values()):
                _collect(pool, s, w, now, report)
                schedule.answered(w, now)
                tally.update(w)
            if feed is not None and following is not None and following.done():
                feed, touched = _follow(feed, following, watches, now, report, verdict)
                following = None
                schedule.heard(touched)
                for host in touched:
                    if host in watches:
                        tally.update(watches[host])
                if feed is None:
                    schedule.poll_everyone(now)
            if stats is not None and stats.done():
                swarm = swarm_stats(stats, report.info_hash) or swarm
                stats = None
            for w in schedule.sweep(now):
                tally.update(w)
            pending = schedule.pending
            if not pending or now - drawn >= PROGRESS_INTERVAL:
                drawn = now
                report.emit(tally.event(feed.swarm if feed else swarm))
            if not pending:
                return
            if now >= deadline:
                for w in list(pending.values()):
                    why = f"{w.report.state}, {w.report.bytes} of {size} bytes"
                    report.fail(w.report.host, f"timed out after {waited:.0f} s ({why})")
                tally.rebuild()
                report.emit(tally.event(feed.swarm if feed else swarm))
                return
            interval = schedule.interval()
            # A poll that waits on its host holds a thread: only while every
            # pending peer (and the stats) has one.
            hold = interval if len(pending) < workers else 0.0
            if feed is not None and following is None:
                assert s.tracker
                tracker = pool.get(s.tracker)
                following = threads.submit(feed.read, tracker, s, interval, len(pending))
            for w in schedule.due(now):
                w.polled, w.running = now, 0.0
                w.wait = hold if feed is None else 0.0
                w.future = threads.submit(read_status, pool.get(w.report.host), s, w)
                schedule.sent(w)
            stats_due = now - stats_polled >= max(interval, STATS_INTERVAL)
            if feed is None and plan.stats_url and s.tracker and stats is None and stats_due:
                stats_polled = now
                stats = threads.submit(_read_stats, pool, s, plan.stats_url)
            wait_for = min(s.poll_interval, 0.5, schedule.next_due(now))
            futures = [w.future for w in schedule.inflight.values()]
            pause(max(0.01, wait_for), [*futures, stats, following])
    finally:
        # A poll stuck on a dead host must not hold the run; closing the pool's
        # connections later unblocks its thread.
        threads.shutdown(wait=False, cancel_futures=True)


class _Schedule:
    """Which peers the watch still follows, which polls are out, and which are due when.

    Every step touches only the peers it names, so a wake-up of the watch
    costs what changed, however many peers there are: the polls out are a
    dict, the polls due a heap by time. With a feed, a peer is read when the
    feed asks (:attr:`Watch.due`) or, while the tracker has not heard from
    it, every UNHEARD seconds; without one, each peer at its
    :meth:`Watch.next_poll`. A sweep over every peer runs only every SWEEP
    seconds, for a verdict that came from elsewhere.
    """

    def __init__(
        self, watches: Mapping[str, Watch], size: int, poll_interval: float, fed: bool
    ) -> None:
        self.size, self.poll_interval, self.fed = size, poll_interval, fed
        self.pending: dict[str, Watch] = {h: w for h, w in watches.items() if not w.settled}
        self.inflight: dict[str, Watch] = {}
        self.asked: dict[str, Watch] = {}
        self.heap: list[tuple[float, str]] = []
        self.swept = 0.0
        for host, w in self.pending.items():
            first = w.polled + self._unheard() if fed else w.next_poll(*self._pace())
            heapq.heappush(self.heap, (first, host))

    def _pace(self) -> tuple[float, int, float]:
        """Return (interval, size, fast) for the next poll times: slower on large fleets."""
        # about 200 status reads a second at most, so the control host's SSH stays modest
        fast = max(FAST_POLL, len(self.pending) / 200)
        return max(self.poll_interval, fast), self.size, fast

    def _unheard(self) -> float:
        return max(UNHEARD, len(self.pending) / 200)

    def interval(self) -> float:
        return self._pace()[0]

    def _settle(self, w: Watch) -> bool:
        if w.settled:
            self.pending.pop(w.report.host, None)
            self.asked.pop(w.report.host, None)
            return True
        return False

    def answered(self, w: Watch, now: float) -> None:
        """Take in a poll that ended (or a peer that was failed while it hung)."""
        host = w.report.host
        if w.future is not None and not w.report.finished:
            return
        self.inflight.pop(host, None)
        if self._settle(w):
            return
        if w.due:
            self.asked[host] = w
        elif not self.fed:
            heapq.heappush(self.heap, (w.next_poll(*self._pace()), host))
        elif not w.heard:
            heapq.heappush(self.heap, (now + self._unheard(), host))

    def heard(self, hosts: list[str]) -> None:
        """Take in the feed's news of ``hosts``: settled, or due for a read."""
        for host in hosts:
            w = self.pending.get(host)
            if w is None or self._settle(w):
                continue
            if w.due:
                self.asked[host] = w

    def poll_everyone(self, now: float) -> None:
        """The feed failed: poll every peer still pending from now on."""
        self.fed = False
        self.heap = [(now, host) for host in self.pending if host not in self.inflight]
        heapq.heapify(self.heap)
        self.asked.clear()

    def sweep(self, now: float) -> list[Watch]:
        """Drop the peers settled by other means (at most every SWEEP seconds); return them.

        Only those changed the progress line's sums: the caller updates them,
        where rebuilding the sums from every peer was a fifth of the watch's
        CPU at 1,000 simulated peers (cProfile of a deploy).
        """
        if now - self.swept < SWEEP:
            return []
        self.swept = now
        found = [w for w in self.pending.values() if w.settled]
        for w in found:
            self._settle(w)
        return found

    def due(self, now: float) -> list[Watch]:
        """Return the peers to read now (none of them with a poll out)."""
        out: dict[str, Watch] = {}
        for host, w in list(self.asked.items()):
            if w.future is not None:
                continue  # asked again once its poll is in (answered)
            del self.asked[host]
            if not self._settle(w):
                out[host] = w
        while self.heap and self.heap[0][0] <= now:
            _, host = heapq.heappop(self.heap)
            peer = self.pending.get(host)
            if peer is None or peer.future is not None or host in out or self._settle(peer):
                continue
            if self.fed and peer.heard:
                continue  # the feed follows it now
            out[host] = peer
        return list(out.values())

    def sent(self, w: Watch) -> None:
        w.due = False
        self.inflight[w.report.host] = w

    def next_due(self, now: float) -> float:
        """Return the seconds until the next poll is due (a large number when none is)."""
        return max(0.0, self.heap[0][0] - now) if self.heap else 3600.0


def _open_feed(plan: Plan, report: DeployReport) -> Feed | None:
    """Return the run's feed of the tracker's ``/progress``, or None where there is none."""
    if not (plan.progress_url and plan.report_ids and report.info_hash and plan.s.tracker):
        return None
    return Feed(plan.progress_url, report.info_hash, plan.report_ids)


def _follow(
    feed: Feed,
    future: Future[dict[str, Any]],
    watches: Mapping[str, Watch],
    now: float,
    report: DeployReport,
    verdict: Verdict = "poll",
) -> tuple[Feed | None, list[str]]:
    """Take in one answer of the feed; return the feed (None once it failed) and its hosts."""
    try:
        changes = feed.take(future.result())
    except Exception as exc:
        # One slow answer of a loaded tracker (5,000 simulated peers reporting) must
        # not turn the watch into 5,000 pollers: it drops the feed only after
        # FEED_TRIES failures in a row.
        feed.failures += 1
        if feed.failures < FEED_TRIES:
            return feed, []
        why = failure_reason(exc)
        report.emit(
            Event("warning", f"the tracker's progress feed failed ({why}): polling every peer")
        )
        return None, []
    feed.failures = 0
    for host, peer in changes.items():
        w = watches.get(host)
        if w is None or w.settled:
            continue
        w.heard = now
        w.due = w.due or settled(peer)
        w.silent = bool(peer["silent"])
        r = w.report
        if r.state not in contract.FINAL_STATES:
            r.state, r.bytes = peer["state"], peer["done"]
            r.from_seeder, r.from_peers = peer["from_seeder"], peer["from_peers"]
        if verdict == "finish" and peer["installed"] and not peer["silent"]:
            # no poll: finish reads this peer's status anyway, and its reply decides
            w.provisional, w.due = True, False
    return feed, list(changes)


def _read_stats(pool: ConnectionPool, s: Settings, url: str) -> dict[str, object]:
    assert s.tracker
    return run_agent(pool.get(s.tracker), s, "stats", "--url", url)


def _collect(pool: ConnectionPool, s: Settings, w: Watch, now: float, report: DeployReport) -> None:
    """Take in a finished poll of one peer, or fail the peer if its poll hangs."""
    host = w.report.host
    if w.future is None:
        return
    if not w.future.done():
        # A host that cannot answer one status read in half the peer timeout
        # has lost its link or its sshd: fail it now, not at the deadline.
        # The clock starts when the poll runs, not while it waits for a thread.
        hang = min(POLL_TIMEOUT, max(5.0, s.timeout / 2))
        # silent on the tracker for SILENCE s already: that much of the hang is over
        waited = SILENCE if w.silent else 0.0
        if w.running and now - w.running > max(2.0, hang - waited) + 2 * w.wait:
            w.lost = "no answer"
            report.fail(host, f"no answer for {hang:.0f} s during the download")
        return
    future, w.future = w.future, None
    try:
        reply = future.result()
    except Exception as exc:
        w.lost = failure_reason(exc)
        report.fail(host, f"lost contact during the download: {failure_reason(exc)}")
        return
    before, before_at = w.report.bytes, w.measured
    if apply_status(w, reply, now):
        tail = log_tail(pool, s, host)
        if tail:
            w.report.reason = f"{w.report.reason}: {tail}"
    w.polls += 1
    if w.report.bytes > before and before_at:
        w.rate = (w.report.bytes - before) / max(now - before_at, 1e-3)
    w.measured = now
    if w.report.finished:
        report.emit(verdict_event(w.report))


def verdict_event(r: HostReport) -> Event:
    """Return the event that tells a peer's verdict: installed (routine news) or failed."""
    message = r.state if r.state == "already installed" else "installed"
    data = {"ok": r.ok, "reason": r.reason, "report": r, "quiet": r.ok}
    return Event("host", message if r.ok else "failed", r.host, data)


class _Tally:
    """The progress line's sums over every peer, kept up to date one peer at a time.

    Summing every peer for each line made a quiet wake-up of the watch cost
    O(N); :meth:`update` is told of each peer the watch touched, and
    :meth:`rebuild` recounts them all (after a timeout fails every peer left).
    """

    def __init__(self, watches: Mapping[str, Watch], size: int) -> None:
        self.watches, self.size = watches, size
        self.rebuild()

    def _value(self, w: Watch) -> tuple[int, int, int]:
        r = w.report
        done = r.ok or w.provisional
        return int(done), int(r.reason is not None and not r.ok), self.size if done else r.bytes

    def rebuild(self) -> None:
        self.of = {host: self._value(w) for host, w in self.watches.items()}
        self.done = sum(v[0] for v in self.of.values())
        self.failed = sum(v[1] for v in self.of.values())
        self.bytes = sum(v[2] for v in self.of.values())

    def update(self, w: Watch) -> None:
        host = w.report.host
        old, new = self.of.get(host, (0, 0, 0)), self._value(w)
        self.of[host] = new
        self.done += new[0] - old[0]
        self.failed += new[1] - old[1]
        self.bytes += new[2] - old[2]

    def event(self, swarm: dict[str, object]) -> Event:
        data = {
            "done": self.done,
            "failed": self.failed,
            "total": len(self.watches),
            "bytes": self.bytes,
            "bytes_total": self.size * len(self.watches),
            "swarm": swarm,
        }
        return Event("progress", data=data)


def pause(seconds: float, futures: Sequence[Future[Any] | None]) -> None:
    """Wait up to ``seconds`` or until any poll in ``futures`` answers."""
    live = [f for f in futures if f is not None]
    if live:
        wait(live, timeout=seconds, return_when=FIRST_COMPLETED)
    else:
        time.sleep(seconds)  # pacing between poll rounds, not synchronisation


def swarm_stats(
    future: Future[dict[str, object]], info_hash: str | None
) -> dict[str, object] | None:
    """Return the tracker's stats of this torrent from a finished stats poll, or None."""
    try:
        data = future.result()
    except Exception:  # the tracker's numbers are decoration; peers' status files decide
        return None
    swarms = data.get("swarms")
    if not isinstance(swarms, dict) or not info_hash:
        return None
    entry = swarms.get(info_hash.lower()) or swarms.get(info_hash.upper())
    return entry if isinstance(entry, dict) else None
