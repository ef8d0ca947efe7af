"""Per-host costs of the control side that must not grow with N (issue 16), without hosts.

Each test runs the same operation at N = 500 and N = 5,000 and fails if its
cost per host at 5,000 is more than 1.5 times the cost at 500, or if a
command's length grows with N. They run in seconds, on fake connections or
none.

The cost is counted, not timed: the number of Python and C function calls
the operation makes (``sys.setprofile``, in every thread it starts). A loop
over all hosts inside a per-host step shows as calls that grow with N,
whatever else the machine is doing; timings on a shared 2-core machine do
not (CI once failed a timed version of these tests at 2.1 x for a step that
is flat by count). Speed itself is measured by ``inv bench.scale``.
"""

from __future__ import annotations

import base64
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from invoke import Context, Result
from test_control import FakePool, ok, status

from fabmurder import daemons, watch
from fabmurder.config import settings
from fabmurder.plan import Plan, urls
from fabmurder.probe import Probe
from fabmurder.remote import ConnectionPool
from fabmurder.report import DeployReport, HostReport

SMALL, LARGE = 500, 5000
#: the largest growth of a per-host cost from SMALL to LARGE hosts that counts as flat
FLAT = 1.5
#: a cost that blows past this many calls at LARGE has grown far beyond linear
BUDGET = 20_000_000
#: connections measured one by one after the first (which reads known_hosts)
SAMPLE = 100
#: peer starts measured in a fleet of SMALL and of LARGE
STARTS = 50
RELEASE = 1000
KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIGJ7y5nOfIc7d2c1KZf6xHh2yXq8P1xA0u8C3oJx8Jq5"


def address(i: int, gaps: bool = False) -> str:
    """Return the address of host ``i``: 250 to a /24, every other one when ``gaps``."""
    step = 2 if gaps else 1
    net, host = divmod(i * step, 250)
    return f"10.{net // 250}.{net % 250}.{host + 2}"


def hosts(n: int) -> list[str]:
    return [f"root@{address(i)}:2222" for i in range(1, n + 1)]


#: feed answers with no change in the quiet-watch test
QUIET_ROUNDS = 30


class Calls:
    """Count the function calls (Python and C) made while it is entered, in every thread.

    Threads that already run are not counted: the operations measured here
    start their own (thread pools), and the count stops with the block.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def _profile(self, frame: object, event: str, arg: object) -> None:
        if event in ("call", "c_call"):
            self.count += 1  # a lost increment between threads is noise far below 1.5 x
            if self.count > BUDGET:
                sys.setprofile(None)
                raise RuntimeError(f"more than {BUDGET} calls: grown far beyond linear")

    def __enter__(self) -> Calls:
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def per_host(measure: Callable[[int], int]) -> tuple[float, float]:
    """Return the calls per host of ``measure(n)`` at SMALL and LARGE."""
    return measure(SMALL) / SMALL, measure(LARGE) / LARGE


def assert_flat(what: str, small: float, large: float) -> None:
    ratio = large / max(small, 1e-9)
    assert large <= FLAT * small, (
        f"{what}: {small:.1f} calls per host at N={SMALL}, {large:.1f} at "
        f"N={LARGE} ({ratio:.2f} x; flat is at most {FLAT} x)"
    )


def plan_of(n: int, gaps: bool = False, **options: Any) -> Plan:
    """A plan of a deploy from one seeder to ``n`` peers, with fabmurder's own tracker."""
    peers = [f"p{i}" for i in range(1, n + 1)]
    s = settings(Context(), seeder="seed", tracker="seed", peers=peers, tag="v1", **options)
    found = Probe(
        addresses={"seed": "10.250.0.1", **{p: address(i, gaps) for i, p in enumerate(peers, 1)}}
    )
    ids = {p: f"id{i}" for i, p in enumerate(peers, 1)}
    return Plan(s, found, "dep", "tok", urls(s, "10.250.0.1", "tok", "dep"), ids)


# -- connecting -----------------------------------------------------------------------------------


def test_a_known_hosts_file_of_5000_hosts_costs_each_connection_what_one_of_500_does(
    tmp_path: Path,
) -> None:
    def measure(n: int) -> int:
        """Return the calls of ``n`` connections: the first, then ``SAMPLE`` more times n - 1."""
        names = hosts(n)
        path = tmp_path / f"known_hosts_{n}"
        path.write_text("".join(f"[{key_host(h)}]:2222 ssh-ed25519 {KEY}\n" for h in names))
        pool = ConnectionPool(Context().config, known_hosts=(str(path),))
        with Calls() as first:
            pool.get(names[0])  # a pool that reads the file once reads it here
        with Calls() as rest:
            for host in names[1 : SAMPLE + 1]:
                pool.get(host)
        # each connection knows its own host's key, and only that one
        keys = pool.get(names[SAMPLE]).client.get_host_keys()
        assert keys.lookup(f"[{key_host(names[SAMPLE])}]:2222") is not None
        assert len(keys) == 1
        return first.count + (n - 1) * rest.count // SAMPLE

    assert_flat("a connection's share of known_hosts", *per_host(measure))


def key_host(host: str) -> str:
    return host.split("@")[1].split(":")[0]


# -- starting -------------------------------------------------------------------------------------


def test_the_allow_list_of_5000_addresses_is_built_once_at_a_flat_cost_per_address() -> None:
    def measure(n: int) -> int:
        plan = plan_of(n, gaps=True)
        with Calls() as calls:
            first = plan.allow_text
        assert plan.allow_text is first  # built once per run, not once per peer
        assert "\n10.250.0.1/32\n" in first  # the seeder, among the peers
        return calls.count

    assert_flat("the allow-list per address", *per_host(measure))


def start_commands(n: int, tmp_path: Path, count: int | None = None) -> tuple[list[str], int]:
    """Build the start command of the first ``count`` peers of ``n``; return them and the calls."""
    plan = plan_of(n, gaps=True, destination_path="/srv/app")
    torrent = tmp_path / "v1.torrent"
    torrent.write_bytes(b"d8:announce40:http://10.250.0.1:8997/announce/dep4:infod4:name2:v1ee")
    pool = FakePool(lambda host, command: ok({"pid": 7, "pid_file": "x"}))
    peers = plan.s.peers[: count or n]
    # what a run builds once (and the test above times per address) is not a start's cost
    assert plan.allow_text and plan.stripes and plan.first_byte_wait
    with Calls() as calls:
        for peer in peers:
            daemons.start_peer(pool, plan, pool.get(peer), torrent, "ab" * 32)
    return [command for _, command in pool.log], calls.count


def test_a_peer_start_command_is_as_long_for_5000_peers_as_for_500(tmp_path: Path) -> None:
    small, _ = start_commands(SMALL, tmp_path, count=1)
    large, _ = start_commands(LARGE, tmp_path, count=1)
    assert len(large[0]) < 128 * 1024, "beyond Linux's limit for one argv string (E2BIG)"
    assert len(large[0]) <= len(small[0]) + 64, (len(small[0]), len(large[0]))


def test_the_seeders_start_command_is_as_long_for_5000_peers_as_for_500() -> None:
    lengths = {}
    for n in (SMALL, LARGE):
        plan = plan_of(n, gaps=True)
        pool = FakePool(lambda host, command: ok({"pid": 7}))
        daemons.start_seed(pool, plan, lambda event: None)
        ((host, command),) = pool.log
        assert host == "seed" and "--allow-file" in command and "--allow " not in command
        lengths[n] = len(command)
    assert lengths[LARGE] <= lengths[SMALL] + 8, lengths  # the allow-list went to stdin


def test_starting_5000_peers_costs_each_peer_what_starting_500_does(tmp_path: Path) -> None:
    # the same starts, in a fleet of 500 and of 5,000: only N differs
    small = start_commands(SMALL, tmp_path, STARTS)[1] / STARTS
    large = start_commands(LARGE, tmp_path, STARTS)[1] / STARTS
    assert_flat("a peer's start command", small, large)


# -- watching -------------------------------------------------------------------------------------


def feed_report(state: str, installed: bool) -> dict[str, Any]:
    """One peer's report in a ``/progress`` answer."""
    return {
        "addr": "10.0.0.2", "state": state, "installed": installed, "error": None,
        "done": RELEASE if installed else 5, "total": RELEASE, "from_seeder": 5,
        "from_peers": 0, "uploaded": 0, "silent": False, "seq": 1,
    }  # fmt: skip


Fed = tuple[Plan, FakePool, DeployReport, dict[str, watch.Watch], list[int]]


def fed_fleet(n: int, installs: Callable[[int, Sequence[str]], Sequence[str]]) -> Fed:
    """Return a watch's plan, pool, report, watches and feed counter for ``n`` reporting peers.

    The tracker's first ``/progress`` answer says every peer is downloading;
    answer number ``seq`` after it reports ``installs(seq, peers)`` installed.
    """
    plan = plan_of(n, poll_interval=0.01)
    peers = plan.s.peers
    seq = [0]

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            seq[0] += 1
            if seq[0] == 1:
                changes = {plan.report_ids[p]: feed_report("downloading", False) for p in peers}
            else:
                done = installs(seq[0], peers)
                changes = {plan.report_ids[p]: feed_report("seeding", True) for p in done}
            totals = {"reporters": n, "installed": 0, "failed": 0, "silent": 0}
            return ok({"seq": seq[0], "totals": totals, "changes": changes, "swarm": {}})
        record = status("seeding", RELEASE, installed=True)
        return ok({"status": record, "alive": True, "error": None})

    report_ = DeployReport("v1", hosts={h: HostReport(h) for h in peers})
    report_.info_hash = "ab" * 20
    now = time.monotonic()
    watches = {h: watch.Watch(report_.hosts[h], started=now, polled=now) for h in peers}
    return plan, FakePool(handler, parallel=32), report_, watches, seq


def watched(n: int) -> int:
    """Watch ``n`` peers that report through the feed in ten waves; return the calls."""

    def installs(seq: int, peers: Sequence[str]) -> Sequence[str]:
        first = (seq - 2) * (n // 10)
        return peers[first : first + n // 10]

    plan, pool, report_, watches, _ = fed_fleet(n, installs)
    with Calls() as calls:
        watch.watch(pool, plan, watches, RELEASE, report_)
    assert all(r.ok for r in report_.hosts.values())
    assert len(pool.commands(" poll ")) == n  # each peer read once, when its report said so
    return calls.count


def test_watching_5000_peers_through_the_feed_costs_each_peer_what_500_do() -> None:
    assert_flat("the watch's calls per peer", *per_host(watched))


def quiet_wakeup(n: int, monkeypatch: pytest.MonkeyPatch) -> float:
    """Return the median calls of one wake-up of the watch of ``n`` peers while nothing happens.

    The feed says every peer is downloading, then answers QUIET_ROUNDS times
    with no change (as the tracker does while a large release moves), then
    every peer installs. The wake-ups between are what the control host
    spends each second of the transfer.
    """

    def installs(seq: int, peers: Sequence[str]) -> Sequence[str]:
        return [] if seq <= QUIET_ROUNDS + 1 else peers

    plan, pool, report_, watches, seq = fed_fleet(n, installs)
    marks: list[tuple[int, int]] = []
    real_pause = watch.pause

    with Calls() as calls:

        def pause(seconds: float, futures: Any) -> None:
            marks.append((seq[0], calls.count))
            real_pause(seconds, futures)

        monkeypatch.setattr(watch, "pause", pause)
        watch.watch(pool, plan, watches, RELEASE, report_, verdict="finish")
    assert all(w.provisional for w in watches.values())
    # wake-ups that began and ended inside the quiet rounds
    costs = [
        b - a
        for (seq_a, a), (seq_b, b) in zip(marks, marks[1:], strict=False)
        if seq_a >= 2 and seq_b <= QUIET_ROUNDS
    ]
    assert len(costs) >= QUIET_ROUNDS // 2, f"only {len(costs)} quiet wake-ups seen"
    return statistics.median(costs)


def test_a_quiet_wakeup_of_the_watch_costs_the_same_at_500_and_5000_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small, large = quiet_wakeup(SMALL, monkeypatch), quiet_wakeup(LARGE, monkeypatch)
    # per wake-up, not per host: the control host's work per second of the transfer
    assert large <= FLAT * small, (
        f"a quiet wake-up of the watch: {small:.0f} calls at N={SMALL}, {large:.0f} at N={LARGE}"
    )


def test_base64_of_the_torrent_travels_on_stdin_not_in_the_command(tmp_path: Path) -> None:
    commands, _ = start_commands(SMALL, tmp_path, count=1)
    torrent = base64.b64encode((tmp_path / "v1.torrent").read_bytes()).decode()
    assert torrent not in commands[0]


# -- timeouts -------------------------------------------------------------------------------------


def test_a_peer_waits_for_its_first_byte_longer_in_a_larger_fleet_and_the_timeout_stays(
    tmp_path: Path,
) -> None:
    # Every peer starts before the seeder, parallel at a time: the first of 5,000
    # waits for 157 waves of starts, so its wait for the first byte grows with N.
    waits = {}
    for n in (SMALL, LARGE):
        commands, _ = start_commands(n, tmp_path, count=1)
        words = commands[0].split()
        waits[n] = float(words[words.index("--first-byte-wait") + 1])
        assert float(words[words.index("--timeout") + 1]) == 600
    assert waits[SMALL] == 600 + 30 * 16  # ceil(500 / 32) waves
    assert waits[LARGE] == 600 + 30 * 157
