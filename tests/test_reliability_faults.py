"""Faults injected into real deploys on the fleet, each with the outcome it must have.

Host 1 is tracker and seeder, hosts 2-5 the peers, unless a test says
otherwise. Rate limits (bytes per second, on every agent) make "mid-transfer"
last long enough to break something in it; the tests wait on the agents'
status files, never on the clock.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabmurder import pipeline
from fabmurder.errors import DeployError
from fabmurder.report import DeployReport, Event
from fabmurder.testing.deploykit import (
    AGENT_PYTHON,
    Background,
    DeployKit,
    wait_for,
    write_fabfile,
)

#: the release: a small tree with one 2 MiB file, 32 pieces of 64 KiB
SIZE = 2 * 1024 * 1024
PEERS = (2, 3, 4, 5)


@pytest.fixture(scope="module")
def tree(kit: DeployKit) -> dict[str, Any]:
    """Build the release on the seeder once for this module; return its manifest."""
    return kit.make_tree(1, kit.files_path, SIZE)


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    """Start and end every test with no agent, temp file or release on hosts 1-5."""
    kit.reset(range(1, 6))
    yield
    kit.reset(range(1, 6))


def downloading(status: dict[str, Any]) -> bool:
    return int(status.get("done") or 0) > 0


def any_peer(
    kit: DeployKit, run: Background | None, tag: str, test: Any, timeout: float = 30
) -> tuple[int, dict[str, Any]]:
    """Wait until one of the peers' status files satisfies ``test``; return which and it."""

    def check() -> tuple[int, dict[str, Any]] | None:
        if run is not None:
            run.check()
        for index in PEERS:
            status = kit.status(index, f"peer-{tag}")
            if status is not None and test(status):
                return index, status
        return None

    found: tuple[int, dict[str, Any]] = wait_for(check, timeout, f"a peer of {tag}")
    return found


def assert_installed(kit: DeployKit, tree: dict[str, Any], tag: str, hosts: Any) -> None:
    for index in hosts:
        assert kit.manifest(index, f"{kit.destination_path}/{tag}") == tree, index


def assert_nothing_left(kit: DeployKit, tag: str, hosts: Any) -> None:
    """No release, no partial extraction, no temp file and no agent of ``tag`` on ``hosts``."""
    for index in hosts:
        assert kit.leftovers(index, tag) == {"release": [], "partial": [], "temp": []}, index
        assert [p for p in kit.agents(index) if f"-{tag}." in p] == [], index


@pytest.fixture
def slow_peer(kit: DeployKit) -> Iterator[int]:
    """Cap host 5's download at 2 Mbit/s (its link, with tc); return its index."""
    kit.cap_download(5, 2000)
    try:
        yield 5
    finally:
        kit.cap_download(5, None)


def test_a_seeder_killed_once_the_peers_hold_every_piece_does_not_stop_the_deploy(
    kit: DeployKit, tree: dict[str, Any], slow_peer: int
) -> None:
    """Expected: the deploy completes from the finished peers; every peer is identical."""
    c = kit.context(kit.murder(PEERS, seed_after=60))
    run = kit.background(pipeline.distribute_files, c, tag="sk1")
    for index in (2, 3, 4):
        kit.wait_status(index, "peer-sk1", lambda s: s["installed"], 40, run)
    kit.kill(1, "seed-sk1.pid")
    at_kill = kit.status(slow_peer, "peer-sk1") or {}
    report: DeployReport = run.result(90)
    assert report.failures == {}
    assert not at_kill.get("installed") and at_kill.get("done", 0) < SIZE, at_kill
    assert_installed(kit, tree, "sk1", PEERS)
    # the slow peer finished without the seeder: the rest came from the other peers
    slow = report.hosts[kit.fleet.host(slow_peer).host_string]
    assert slow.from_seeder < report.size and slow.from_peers > 0, (slow, at_kill)


def test_a_seeder_killed_before_the_peers_hold_every_piece_fails_within_the_timeout_naming_it(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: every peer fails by ``timeout``, the reason names the seeder; nothing installed."""
    timeout = 12
    c = kit.context(kit.murder(PEERS, upload_rate_limit=100_000, timeout=timeout))
    run = kit.background(pipeline.distribute_files, c, tag="sk2")
    any_peer(kit, run, "sk2", downloading)
    kill_pid = kit.kill(1, "seed-sk2.pid")
    killed = time.monotonic()
    with pytest.raises(DeployError) as caught:
        run.result(90)
    took = time.monotonic() - killed
    # The timeout must fire: a bound that is the behaviour itself, with generous slack.
    # A peer that got no byte before the kill waits timeout + 30 s (one wave of starts)
    # from its own start for its first byte; one that got some, timeout from then.
    first_byte_wait = timeout + 30
    assert took < first_byte_wait + 10, took
    failures = caught.value.failures
    assert sorted(failures) == sorted(kit.fleet.host(i).host_string for i in PEERS)
    for reason in failures.values():
        # the agents' own timeout ("12s at 40.6%"), not the control side's later deadline
        pattern = rf"timed out after ({timeout}|{first_byte_wait})s at [0-9.]+%"
        assert re.search(pattern, reason), reason
        assert f"the seeder's agent on {kit.fleet.host(1).host_string}" in reason, reason
    assert "seeder" in str(caught.value) and str(kill_pid) in str(caught.value)
    assert_nothing_left(kit, "sk2", (1, *PEERS))


def tracker_stats(kit: DeployKit) -> dict[str, Any]:
    """Return the fleet tracker's /stats, read on its host (empty if it does not answer)."""
    import json

    token = kit.sh(1, f"cat {kit.temp_path}/tracker.token")
    url = f"http://{kit.fleet.host(1).address}:{kit.tracker_port}/stats/{token}"
    command = [AGENT_PYTHON, "-m", "fabmurder", "stats", "--url", url]
    out = kit.fleet.run_in(1, command, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def test_a_tracker_killed_mid_transfer_and_restarted_is_refilled_and_the_deploy_completes(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: peers go on with their connections, re-announce to the new tracker, finish."""
    c = kit.context(kit.murder(PEERS, upload_rate_limit=120_000))
    run = kit.background(pipeline.distribute_files, c, tag="tk1")
    any_peer(kit, run, "tk1", downloading)
    info_hash = kit.status(1, "seed-tk1")["info_hash"]  # type: ignore[index]
    kit.kill(1, "tracker.pid")
    done_at_kill = sum(int((kit.status(i, "peer-tk1") or {}).get("done") or 0) for i in PEERS)

    def progressed() -> bool:
        now = sum(int((kit.status(i, "peer-tk1") or {}).get("done") or 0) for i in PEERS)
        return now >= done_at_kill + 4 * 65536

    wait_for(progressed, 30, "the peers to progress without a tracker")
    assert tracker_stats(kit) == {}  # it really is gone
    pipeline.start_tracker(c)  # no state on disk but its allow-list and token

    def refilled() -> bool:
        swarm = tracker_stats(kit).get("swarms", {}).get(info_hash, {})
        return int(swarm.get("peers") or 0) >= 2

    # agents retry every 2 s; the deadline only guards against a hang (slack for load)
    wait_for(refilled, 60, "the peers to re-announce to the restarted tracker")
    report: DeployReport = run.result(90)
    assert report.failures == {}
    assert_installed(kit, tree, "tk1", PEERS)


def test_a_peer_whose_agent_is_killed_is_reported_and_max_failed_peers_lets_the_run_pass(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: that host failed with the reason, the others installed, exit status 0 (max 1)."""
    events: list[Event] = []
    c = kit.context(kit.murder(PEERS, upload_rate_limit=200_000, max_failed_peers=1))
    run = kit.background(pipeline.distribute_files, c, tag="pk1", on_event=events.append)
    kit.wait_status(3, "peer-pk1", downloading, 30, run)
    kit.kill(3, "peer-pk1.pid")
    report: DeployReport = run.result(90)
    victim = kit.fleet.host(3).host_string
    assert list(report.failures) == [victim]
    assert "exited without installing" in report.failures[victim]
    assert_installed(kit, tree, "pk1", (2, 4, 5))
    assert_nothing_left(kit, "pk1", (3,))
    assert any(e.host == victim and e.data.get("ok") is False for e in events if e.kind == "host")


def test_a_peer_whose_link_is_cut_fails_by_name_and_max_failed_peers_0_fails_the_run(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: DeployError naming only that host (no answer); the others installed."""
    timeout = 30
    victim = kit.fleet.host(4).host_string
    failed: list[Event] = []

    def note(event: Event) -> None:
        if event.kind == "host" and event.host == victim and event.data.get("ok") is False:
            failed.append(event)

    c = kit.context(kit.murder(PEERS, upload_rate_limit=200_000, timeout=timeout))
    run = kit.background(pipeline.distribute_files, c, tag="lk1", on_event=note)
    kit.wait_status(4, "peer-lk1", downloading, 30, run)
    kit.fleet.set_link(4, False)
    cut = time.time()  # the clock of Event.at
    try:
        with pytest.raises(DeployError) as caught:
            run.result(120)
    finally:
        kit.fleet.set_link(4, True)
    assert list(caught.value.failures) == [victim]
    assert "1 of 4 peer(s) failed" in str(caught.value)
    assert_installed(kit, tree, "lk1", (2, 3, 5))
    # A lost host is given up on once a status read has hung for half the timeout ...
    half = timeout // 2
    assert caught.value.failures[victim] == f"no answer for {half} s during the download"
    assert failed and failed[0].at > cut, (failed, cut)
    # ... not at the deadline: before the cut-off agent's own timeout fired.
    wait_for(lambda: not [p for p in kit.agents(4) if "-lk1." in p], timeout + 20, "its exit")
    agent = kit.status(4, "peer-lk1") or {}
    assert str(agent.get("error")).startswith(f"timed out after {timeout}s"), agent
    assert failed[0].at < float(agent["started_at"]) + timeout, (failed, agent)
    # Nothing half-installed. The run could not reach it to clean up, so its partial
    # tarball waits in temp_path for a rerun, until clean_temp_files.
    assert kit.leftovers(4, "lk1")["release"] == kit.leftovers(4, "lk1")["partial"] == []
    assert "lk1.tar" in kit.leftovers(4, "lk1")["temp"]
    pipeline.clean_temp_files(c, tag="lk1")
    assert_nothing_left(kit, "lk1", (4,))


@pytest.fixture
def tiny_destination(kit: DeployKit) -> Iterator[int]:
    """Mount a 1 MiB tmpfs at host 5's destination_path; return the host's index."""
    dest = kit.destination_path
    kit.sh(5, f"mkdir -p {dest} && mount -t tmpfs -o size=1m tmpfs {dest}")
    try:
        yield 5
    finally:
        kit.sh(5, f"umount {kit.destination_path} 2>/dev/null || true", check=False)


def test_a_full_disk_fails_that_peer_clearly_then_a_rerun_finishes_without_resending(
    kit: DeployKit, tree: dict[str, Any], tiny_destination: int
) -> None:
    """Expected: host 5 fails ("not enough space"), nothing half-written; the rerun installs
    on host 5 only, and the hosts that already hold the release download nothing."""
    c = kit.context(kit.murder(PEERS, upload_rate_limit=0))
    with pytest.raises(DeployError) as caught:
        pipeline.distribute_files(c, tag="df1")
    full = kit.fleet.host(5).host_string
    assert list(caught.value.failures) == [full]
    assert "not enough space" in caught.value.failures[full]
    assert kit.listing(5, kit.destination_path) == []  # nothing half-written
    assert_nothing_left(kit, "df1", (1, 5))
    assert_installed(kit, tree, "df1", (2, 3, 4))

    kit.sh(5, f"umount {kit.destination_path}")
    events: list[Event] = []
    report = pipeline.distribute_files(c, tag="df1", on_event=events.append)
    assert report.failures == {}
    assert_installed(kit, tree, "df1", PEERS)
    assert report.hosts[full].from_seeder + report.hosts[full].from_peers > 0
    for index in (2, 3, 4):
        host = kit.fleet.host(index).host_string
        assert report.hosts[host].ok and report.hosts[host].bytes == 0, report.hosts[host]
        assert report.hosts[host].from_seeder == report.hosts[host].from_peers == 0
        assert any(e.host == host and "already installed" in e.message for e in events)


def test_ctrl_c_on_the_control_machine_stops_every_agent_and_says_what_it_stopped(
    kit: DeployKit, tree: dict[str, Any], tmp_path: Path
) -> None:
    """Expected: ``fab`` exits non-zero, names what it stopped; no agent or partial is left."""
    write_fabfile(tmp_path)
    staging = kit.fleet.write_fabric_yaml(
        tmp_path / "staging.yaml", extra={"murder": kit.murder(PEERS, upload_rate_limit=100_000)}
    )
    fab = Path(sys.executable).with_name("fab")
    proc = subprocess.Popen(
        [str(fab), "-f", str(staging), "murder.distribute-files", "--tag", "cc1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        any_peer(kit, None, "cc1", downloading)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert "interrupted" in out.lower(), out
    assert "stopped seed-cc1.pid" in out, out
    assert "stopped peer-cc1.pid" in out, out
    assert "Traceback" not in out, out
    for index in range(1, 6):
        assert [p for p in kit.agents(index) if " tracker " not in p] == [], index
    assert_nothing_left(kit, "cc1", (1, *PEERS))
    # the tracker is the one long-lived daemon; its stop task leaves nothing at all
    pipeline.stop_tracker(kit.context(kit.murder(PEERS)))
    assert kit.agents(1) == []
