"""Per-host costs of the control side that must not grow with N (issue 16), without hosts.

Each test measures the same operation at N = 500 and N = 5,000 and fails if
the cost per host at 5,000 is more than 1.5 times the cost at 500 (plus a
small absolute slack for timer noise), or if a command's length grows with
N. They run in seconds, on fake connections or none.
"""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import Callable
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
#: a cost that blows past this many seconds at LARGE has grown far beyond linear
BUDGET = 20.0
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


def per_host(measure: Callable[[int], float], tries: int = 3) -> tuple[float, float]:
    """Return the seconds per host of ``measure(n)`` at SMALL and LARGE, best of ``tries``.

    The two sizes take turns, and the best of each counts: on a loaded
    machine the worst times are other processes' work.
    """
    small, large = [], []
    for _ in range(tries):
        small.append(measure(SMALL) / SMALL)
        large.append(measure(LARGE) / LARGE)
    return min(small), min(large)


def assert_flat(what: str, small: float, large: float, slack: float = 2e-6) -> None:
    ratio = large / max(small, 1e-9)
    assert large <= FLAT * small + slack, (
        f"{what}: {1e6 * small:.1f} us per host at N={SMALL}, {1e6 * large:.1f} us at "
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
    def measure(n: int) -> float:
        """Return the CPU of ``n`` connections: the first, then ``SAMPLE`` more times n - 1."""
        names = hosts(n)
        path = tmp_path / f"known_hosts_{n}"
        path.write_text("".join(f"[{key_host(h)}]:2222 ssh-ed25519 {KEY}\n" for h in names))
        pool = ConnectionPool(Context().config, known_hosts=(str(path),))
        began = time.process_time()
        pool.get(names[0])  # a pool that reads the file once reads it here
        first = time.process_time() - began
        began = time.process_time()
        for host in names[1 : SAMPLE + 1]:
            pool.get(host)
            if time.process_time() - began > BUDGET:
                pytest.fail(f"{SAMPLE} connections spent more than {BUDGET:g} s on known_hosts")
        rest = (time.process_time() - began) / SAMPLE
        # each connection knows its own host's key, and only that one
        keys = pool.get(names[SAMPLE]).client.get_host_keys()
        assert keys.lookup(f"[{key_host(names[SAMPLE])}]:2222") is not None
        assert len(keys) == 1
        return first + (n - 1) * rest

    small, large = per_host(measure, tries=1)
    assert_flat("a connection's share of known_hosts", small, large, 20e-6)


def key_host(host: str) -> str:
    return host.split("@")[1].split(":")[0]


# -- starting -------------------------------------------------------------------------------------


def test_the_allow_list_of_5000_addresses_is_built_once_at_a_flat_cost_per_address() -> None:
    def measure(n: int) -> float:
        plan = plan_of(n, gaps=True)
        gc.collect()  # the garbage of making the plan is not the allow-list's
        began = time.process_time()
        first = plan.allow_args
        spent = time.process_time() - began
        assert plan.allow_args is first  # built once per run, not once per peer
        assert "--allow" in first and "10.250.0.1/32" in first
        return spent

    assert_flat("the allow-list per address", *per_host(measure, tries=5))


def start_commands(n: int, tmp_path: Path, count: int | None = None) -> tuple[list[str], float]:
    """Build the start command of the first ``count`` peers of ``n``; return them and the time."""
    plan = plan_of(n, gaps=True, destination_path="/srv/app")
    torrent = tmp_path / "v1.torrent"
    torrent.write_bytes(b"d8:announce40:http://10.250.0.1:8997/announce/dep4:infod4:name2:v1ee")
    pool = FakePool(lambda host, command: ok({"pid": 7, "pid_file": "x"}))
    peers = plan.s.peers[: count or n]
    # what a run builds once (and the test above times per address) is not a start's cost
    assert plan.allow_text and plan.stripes
    gc.collect()
    began = time.process_time()
    for peer in peers:
        daemons.start_peer(pool, plan, pool.get(peer), torrent, "ab" * 32)
    spent = time.process_time() - began
    return [command for _, command in pool.log], spent


def test_a_peer_start_command_is_as_long_for_5000_peers_as_for_500(tmp_path: Path) -> None:
    small, _ = start_commands(SMALL, tmp_path, count=1)
    large, _ = start_commands(LARGE, tmp_path, count=1)
    assert len(large[0]) < 128 * 1024, "beyond Linux's limit for one argv string (E2BIG)"
    assert len(large[0]) <= len(small[0]) + 64, (len(small[0]), len(large[0]))


def test_starting_5000_peers_costs_each_peer_what_starting_500_does(tmp_path: Path) -> None:
    # the same starts, in a fleet of 500 and of 5,000: only N differs
    small = min(start_commands(SMALL, tmp_path, STARTS)[1] for _ in range(3)) / STARTS
    large = min(start_commands(LARGE, tmp_path, STARTS)[1] for _ in range(3)) / STARTS
    assert_flat("a peer's start command", small, large)


# -- watching -------------------------------------------------------------------------------------


def watched(n: int) -> float:
    """Watch ``n`` peers that report through the feed in ten waves; return the CPU seconds."""
    plan = plan_of(n, poll_interval=0.01)
    peers = plan.s.peers
    waves = [peers[i : i + n // 10] for i in range(0, n, n // 10)]
    seq = [0]

    def report(state: str, installed: bool) -> dict[str, Any]:
        return {
            "addr": "10.0.0.2", "state": state, "installed": installed, "error": None,
            "done": RELEASE if installed else 5, "total": RELEASE, "from_seeder": 5,
            "from_peers": 0, "uploaded": 0, "silent": False, "seq": 1,
        }  # fmt: skip

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            seq[0] += 1
            if seq[0] == 1:
                changes = {plan.report_ids[p]: report("downloading", False) for p in peers}
            else:
                wave = waves[seq[0] - 2] if seq[0] - 2 < len(waves) else []
                changes = {plan.report_ids[p]: report("seeding", True) for p in wave}
            totals = {"reporters": n, "installed": 0, "failed": 0, "silent": 0}
            return ok({"seq": seq[0], "totals": totals, "changes": changes, "swarm": {}})
        record = status("seeding", RELEASE, installed=True)
        return ok({"status": record, "alive": True, "error": None})

    pool = FakePool(handler, parallel=32)
    report_ = DeployReport("v1", hosts={h: HostReport(h) for h in peers})
    report_.info_hash = "ab" * 20
    now = time.monotonic()
    watches = {h: watch.Watch(report_.hosts[h], started=now, polled=now) for h in peers}
    began = time.process_time()
    watch.watch(pool, plan, watches, RELEASE, report_)
    spent = time.process_time() - began
    assert all(r.ok for r in report_.hosts.values())
    assert len(pool.commands(" poll ")) == n  # each peer read once, when its report said so
    return spent


def test_watching_5000_peers_through_the_feed_costs_each_peer_what_500_do() -> None:
    small, large = per_host(watched, tries=1)
    assert_flat("the watch's CPU per peer", small, large, 20e-6)


def test_base64_of_the_torrent_travels_on_stdin_not_in_the_command(tmp_path: Path) -> None:
    commands, _ = start_commands(SMALL, tmp_path, count=1)
    torrent = base64.b64encode((tmp_path / "v1.torrent").read_bytes()).decode()
    assert torrent not in commands[0]
