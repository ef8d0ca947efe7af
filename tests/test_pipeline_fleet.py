"""The Murder pipeline on the real fleet: setup, deploys, a dead peer, the stop tasks.

Host 1 is tracker and seeder, hosts 2-9 are the eight peers. The agent and
temp files live under each host's private ``/srv``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from invoke import Context

from fabmurder import pipeline
from fabmurder.errors import DeployError
from fabmurder.report import DeployReport, Event
from fabmurder.testing.deploykit import MANIFEST, agent_processes
from fabmurder.testing.fleet import Fleet

AGENT = "/srv/fabmurder/agent"
TEMP = "/srv/fabmurder/tmp"
DEST = "/srv/releases"
# Quotes, spaces and a $ in the seeder's path prove the quoting end to end.
SRC = '/srv/build dir/it\'s "the" $build'
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MAKE_TREE = r"""
set -e
mkdir -p "$1/a/b/c" "$1/empty dir" "$1/bin" "$1/data"
printf 'nested\n' > "$1/a/b/c/deep.txt"
ln -s a/b/c/deep.txt "$1/link"
printf '#!/bin/sh\necho run\n' > "$1/bin/run.sh"
chmod 755 "$1/bin/run.sh"
chmod 640 "$1/a/b/c/deep.txt"
printf 'spaces\n' > "$1/name with spaces.txt"
head -c 22020096 /dev/urandom > "$1/data/big.bin"
"""


@pytest.fixture(scope="session")
def murder(fleet: Fleet, wheels: Path) -> dict[str, Any]:
    """Return the ``murder`` config of the fleet: roles and paths under /srv."""
    hosts = [h.host_string for h in fleet.hosts]
    return {
        "wheel_dir": str(wheels),
        "known_hosts": str(fleet.known_hosts_path),
        "tracker": hosts[0],
        "seeder": hosts[0],
        "peers": hosts[1:9],
        "remote_path": AGENT,
        "temp_path": TEMP,
        "files_path": SRC,
        "destination_path": DEST,
        "timeout": 120,
        "seed_after": 5,
        "poll_interval": 0.5,
    }


def context(fleet: Fleet, murder: dict[str, Any]) -> Context:
    config = fleet.fabric_config()
    config["murder"] = dict(murder)
    return Context(config=config)


@pytest.fixture(scope="session")
def installed(fleet: Fleet, murder: dict[str, Any]) -> list[str]:
    """Install the agent on every fleet host once per session; return what setup did on each."""
    return sorted(pipeline.setup(context(fleet, murder)).values())


@pytest.fixture(scope="session")
def release(fleet: Fleet, installed: list[str]) -> dict[str, Any]:
    """Build the release tree on the seeder and return its manifest."""
    seeder = fleet.hosts[0]
    fleet.run_in(seeder, ["sh", "-c", MAKE_TREE, "make-tree", SRC])
    return manifest(fleet, seeder, SRC)


def manifest(fleet: Fleet, host: Any, path: str) -> dict[str, Any]:
    out = fleet.run_in(host, ["/usr/bin/python3", "-c", MANIFEST, path])
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def listing(fleet: Fleet, host: Any, path: str) -> list[str]:
    """Return the sorted names in a host's directory, hidden ones too, but not digest records.

    A directory that does not exist lists as empty.
    """
    out = fleet.run_in(host, ["sh", "-c", 'ls -A -- "$1" 2>/dev/null || true', "ls", path])
    return sorted(name for name in out.stdout.split() if not name.endswith(".sha256"))


def temp_files(fleet: Fleet, host: Any) -> list[str]:
    """Return every name in a host's ``temp_path``, sorted."""
    out = fleet.run_in(host, ["sh", "-c", 'ls -A -- "$1" 2>/dev/null || true', "ls", TEMP])
    return sorted(out.stdout.split())


@pytest.fixture
def events() -> Iterator[list[Event]]:
    yield []


@dataclass
class FirstDeploy:
    """The first deploy of release r1, and each peer's files just before and after it."""

    report: DeployReport
    events: list[Event]
    before: dict[str, list[str]]
    after: dict[str, list[str]]
    agents: dict[str, list[str]]


@pytest.fixture(scope="module")
def r1(fleet: Fleet, murder: dict[str, Any], release: dict[str, Any]) -> FirstDeploy:
    """Deploy r1 to the eight peers, once for every test that needs it, whatever the order."""
    peers = fleet.hosts[1:9]

    def files() -> dict[str, list[str]]:
        return {h.name: sorted(listing(fleet, h, DEST) + temp_files(fleet, h)) for h in peers}

    before = files()
    events: list[Event] = []
    report = pipeline.distribute_files(context(fleet, murder), tag="r1", on_event=events.append)
    agents = {h.name: agent_processes(fleet, h) for h in fleet.hosts[:9]}
    return FirstDeploy(report, events, before, files(), agents)


#: what an install writes: the shipped wheels, the stamp, the installed package
INSTALLED = (
    'stat -c "%n %i %y" "$1/wheels" "$1"/wheels/* "$1/installed.sha256" '
    '"$1"/venv/lib/*/site-packages/fabmurder/__init__.py'
)


def install_files(fleet: Fleet) -> dict[str, str]:
    """Return, per host, the inode and mtime of each file an install of the agent writes."""
    return {
        h.name: fleet.run_in(h, ["sh", "-c", INSTALLED, "stat", AGENT]).stdout for h in fleet.hosts
    }


def test_setup_installs_the_agent_everywhere_and_a_second_run_changes_nothing(
    fleet: Fleet, murder: dict[str, Any], installed: list[str]
) -> None:
    assert set(installed) <= {"installed", "up to date"} and len(installed) == 9, installed
    before = install_files(fleet)
    assert all(len(files.splitlines()) >= 5 for files in before.values()), before
    result = pipeline.setup(context(fleet, murder))
    assert sorted(result.values()) == ["up to date"] * 9
    # the stamp matched: no wheel was shipped again, nothing was reinstalled
    assert install_files(fleet) == before
    out = fleet.run_in(fleet.hosts[4], [f"{AGENT}/venv/bin/python", "-c", "import libtorrent"])
    assert out.returncode == 0


def test_setup_fails_clearly_on_hosts_without_a_usable_python(
    fleet: Fleet, murder: dict[str, Any], installed: float
) -> None:
    broken = {**murder, "remote_path": "/srv/fabmurder/other", "python": "/usr/bin/python2.7"}
    held = listing(fleet, fleet.hosts[1], "/srv/fabmurder")
    with pytest.raises(DeployError) as caught:
        pipeline.setup(context(fleet, broken))
    assert len(caught.value.failures) == 9
    for reason in caught.value.failures.values():
        assert "no usable Python: '/usr/bin/python2.7' must be Python >= 3.11" in reason
        assert "not found" in reason
    # nothing was written for the broken install
    assert "agent" in held and "other" not in held
    assert listing(fleet, fleet.hosts[1], "/srv/fabmurder") == held


def test_a_release_tree_reaches_eight_peers_identical_in_bytes_and_modes(
    fleet: Fleet, release: dict[str, Any], r1: FirstDeploy
) -> None:
    assert len(release) >= 10 and release["link"] == ["link", "a/b/c/deep.txt"]
    report = r1.report
    assert report.failures == {}
    assert len(report.succeeded) == 8
    for host in fleet.hosts[1:9]:
        assert manifest(fleet, host, f"{DEST}/r1") == release, host.name
        # nothing but the release (and the agent's record of its digest) is left behind
        assert "r1" not in r1.before[host.name]
        assert r1.after[host.name] == sorted([*r1.before[host.name], "r1"]), host.name
        assert r1.agents[host.name] == [], host.name
    assert all(r.bytes == report.size and r.seconds is not None for r in report.hosts.values())
    assert sum(r.from_peers for r in report.hosts.values()) > 0
    assert any(e.kind == "progress" and e.data["done"] == 8 for e in r1.events)
    # the tracker keeps running for the next deploy; the seeder does not
    assert [p for p in r1.agents[fleet.hosts[0].name] if " seed " in p] == []
    assert [p for p in r1.agents[fleet.hosts[0].name] if " tracker " in p] != []


def test_the_same_release_again_is_found_installed_and_sent_to_nobody(
    fleet: Fleet, murder: dict[str, Any], r1: FirstDeploy, events: list[Event]
) -> None:
    report = pipeline.distribute_files(context(fleet, murder), tag="r1", on_event=events.append)
    assert report.failures == {}
    for host in report.hosts.values():
        assert (host.state, host.bytes, host.from_seeder, host.from_peers) == (
            "already installed", 0, 0, 0,
        )  # fmt: skip
    assert sum(1 for e in events if e.message == "already installed") == 8


def test_another_release_under_a_tag_in_use_is_refused_and_nothing_is_touched(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any], r1: FirstDeploy
) -> None:
    fleet.run_in(fleet.hosts[0], ["sh", "-c", "mkdir -p /srv/other && echo other > /srv/other/f"])
    other = {**murder, "files_path": "/srv/other"}
    with pytest.raises(DeployError) as caught:
        pipeline.distribute_files(context(fleet, other), tag="r1")
    assert len(caught.value.failures) == 8
    for reason in caught.value.failures.values():
        assert "already exists; use --force to replace it" in reason, reason
    assert manifest(fleet, fleet.hosts[3], f"{DEST}/r1") == release


def test_the_example_fabfile_deploys_a_second_tag_through_the_real_fab_command(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any], r1: FirstDeploy, tmp_path: Path
) -> None:
    staging = fleet.write_fabric_yaml(tmp_path / "staging.yaml", extra={"murder": murder})
    fab = Path(sys.executable).with_name("fab")
    out = subprocess.run(
        [str(fab), "-f", str(staging), "deploy", "--tag", "r2"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "release r2: 8 of 8 peer(s) ok" in out.stdout
    # the example's deploy is murder.deploy: releases/<tag> and a current symlink
    for host in fleet.hosts[1:9]:
        assert fleet.run_in(host, ["cat", f"{DEST}/LIVE"]).stdout == "releases/r2\n"
        assert manifest(fleet, host, f"{DEST}/releases/r2") == release
        assert manifest(fleet, host, f"{DEST}/r1") == release  # the first release is intact


def test_a_peer_that_is_down_fails_the_run_by_name_and_the_others_still_get_it(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any]
) -> None:
    down = fleet.hosts[8]
    held = listing(fleet, down, DEST) + temp_files(fleet, down)
    fleet.stop_sshd(down)
    try:
        with pytest.raises(DeployError) as caught:
            pipeline.distribute_files(context(fleet, murder), tag="r3")
    finally:
        fleet.start_sshd(down)
    failures = caught.value.failures
    assert list(failures) == [down.host_string]
    assert "cannot connect" in failures[down.host_string]
    assert "1 of 8 peer(s) failed" in str(caught.value)
    for host in fleet.hosts[1:8]:
        assert manifest(fleet, host, f"{DEST}/r3") == release
    # the host that was down is as it was: nothing of r3, nothing else changed
    assert listing(fleet, down, DEST) + temp_files(fleet, down) == held


def test_a_build_on_the_control_machine_is_handed_to_the_seeder_with_local_path(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any], tmp_path: Path
) -> None:
    build = tmp_path / "my build"
    (build / "lib" / "empty").mkdir(parents=True)
    (build / "lib" / "app.py").write_text("print('hello')\n")
    (build / "run").write_text("#!/bin/sh\n")
    (build / "run").chmod(0o755)
    (build / "current").symlink_to("lib/app.py")
    local = {**murder, "local_path": str(build), "files_path": None, "peers": murder["peers"][:2]}
    report = pipeline.distribute_files(context(fleet, local), tag="r6")
    assert report.failures == {}
    got = manifest(fleet, fleet.hosts[1], f"{DEST}/r6")
    assert got["current"] == ["link", "lib/app.py"]
    assert got["run"][:2] == ["file", "0o755"]
    assert got["lib/empty"][0] == "dir"
    assert set(got) == {"current", "run", "lib", "lib/app.py", "lib/empty"}
    # the upload does not linger on the seeder
    left = fleet.run_in(fleet.hosts[0], ["ls", "-A", TEMP]).stdout.split()
    assert [name for name in left if "r6" in name or "upload" in name] == [], left


OPENTRACKER = (
    "mkdir -p /srv/ot && : > /srv/ot/whitelist && cd /srv/ot && "
    '(setsid opentracker -i "$1" -p 6969 -P 6969 -w whitelist -d /srv/ot '
    "</dev/null >/srv/ot/log 2>&1 & echo $! > /srv/ot/pid)"
)


def test_an_external_opentracker_is_used_and_given_each_info_hash(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any]
) -> None:
    tracker = fleet.hosts[0]
    fleet.run_in(tracker, ["sh", "-c", OPENTRACKER, "opentracker", tracker.address])
    external = {
        **murder,
        "tracker_url": f"http://{tracker.address}:6969/announce",
        # Debian's opentracker is whitelist-only: register each torrent, then reload it.
        "tracker_register": (
            "printf '%s\\n' {info_hash} >> /srv/ot/whitelist && kill -HUP $(cat /srv/ot/pid)"
        ),
    }
    try:
        report = pipeline.distribute_files(context(fleet, external), tag="r5")
        whitelist = fleet.run_in(tracker, ["cat", "/srv/ot/whitelist"]).stdout.split()
    finally:
        fleet.run_in(tracker, ["sh", "-c", "kill $(cat /srv/ot/pid)"], check=False)
    assert report.failures == {}
    assert whitelist == [report.info_hash]
    # peers found each other, which only the tracker could have told them
    assert sum(r.from_peers for r in report.hosts.values()) > 0
    assert manifest(fleet, fleet.hosts[2], f"{DEST}/r5") == release


def cleaning(events: list[Event]) -> dict[str, tuple[bool, str | None]]:
    """Return address -> (ok, reason) from the host events of one clean_temp_files call."""
    found = {}
    for e in events:
        if e.kind == "host" and e.host:
            # "user@address:port" or the address alone
            address = e.host.rpartition("@")[2].partition(":")[0]
            found[address] = (e.data["ok"], e.data["reason"])
    return found


def test_stop_tasks_leave_no_fabmurder_process_and_cleaning_spares_running_daemons(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any], events: list[Event]
) -> None:
    seeder, peers = fleet.hosts[0], fleet.hosts[1:9]
    c = context(fleet, {**murder, "tag": "r4", "seed_after": 300})
    pipeline.start_tracker(c)
    pipeline.create_torrent(c)
    pipeline.start_seeding(c)
    running = agent_processes(fleet, seeder)
    assert any(" tracker " in p for p in running) and any(" seed " in p for p in running)
    report = pipeline.peer_download(c)  # the step on its own: torrent and digest from the seeder
    assert report.failures == {} and len(report.succeeded) == 8
    assert manifest(fleet, fleet.hosts[5], f"{DEST}/r4") == release

    stopped = []
    peering = pipeline.stop_peering(c, on_event=events.append)
    assert not peering.failed
    stopped += [r for records in peering.values() for r in records if r["stopped"]]
    for host in peers:
        assert agent_processes(fleet, host) == [], host.name
        assert {"r4.tar", "r4.torrent", "peer-r4.log"} <= set(temp_files(fleet, host)), host.name

    # Beside the running tracker's and seeder's files: a release no daemon serves any
    # more, and a file that is not fabmurder's.
    stale = ["old.tar", "old.torrent", "peer-old.status.json", "seed-old.log"]
    plant = 'cd -- "$1" && shift && touch -- "$@"'
    fleet.run_in(seeder, ["sh", "-c", plant, "plant", TEMP, *stale, "notes.txt"])
    held = temp_files(fleet, seeder)
    assert {"tracker.pid", "seed-r4.pid", "r4.tar", "notes.txt", *stale} <= set(held)
    try:
        news: list[Event] = []
        pipeline.clean_temp_files(c, on_event=news.append)
        assert cleaning(news) == {h.address: (True, None) for h in fleet.hosts[:9]}
        assert temp_files(fleet, seeder) == sorted(set(held) - set(stale))
        for host in peers:
            assert temp_files(fleet, host) == [], host.name

        # one release's files, while its seeder runs: refused on that host, nothing removed
        news = []
        pipeline.clean_temp_files(c, tag="r4", on_event=news.append)
        outcome = cleaning(news)
        ok, reason = outcome.pop(seeder.address)
        assert not ok and "still has a running seeder or peer" in str(reason), reason
        assert outcome == {h.address: (True, None) for h in peers}
        assert temp_files(fleet, seeder) == sorted(set(held) - set(stale))

        for stop in (pipeline.stop_seeding, pipeline.stop_tracker):
            result = stop(c, on_event=events.append)
            assert not result.failed
            stopped += [r for records in result.values() for r in records if r["stopped"]]
        assert {Path(r["pid_file"]).name for r in stopped} >= {"tracker.pid", "seed-r4.pid"}
        for host in fleet.hosts:
            assert agent_processes(fleet, host) == [], host.name

        news = []
        pipeline.clean_temp_files(c, on_event=news.append)
        assert cleaning(news) == {h.address: (True, None) for h in fleet.hosts[:9]}
        # what is left is not a temp file: the tracker's token (kept for its next start)
        assert temp_files(fleet, seeder) == ["notes.txt", "tracker.token"]
    finally:
        fleet.run_in(seeder, ["rm", "-f", "--", f"{TEMP}/notes.txt"])
    # idempotent: a second round stops nothing and says so
    again = pipeline.stop_tracker(c, on_event=events.append)
    assert [r for records in again.values() for r in records if r["stopped"]] == []
    assert events[-1].message == "no tracker running"


def test_murder_stop_stops_everything_past_a_peer_that_is_down_and_names_it(
    fleet: Fleet, murder: dict[str, Any], release: dict[str, Any], tmp_path: Path
) -> None:
    # Murder's stop_all_peering in one task: with `fab murder.stop-peering
    # murder.stop-tracker` a peer that is down halts the chain, the tracker runs on.
    c = context(fleet, {**murder, "tag": "r8", "seed_after": 300})
    pipeline.start_tracker(c)
    pipeline.create_torrent(c)
    pipeline.start_seeding(c)
    assert pipeline.peer_download(c).failures == {}
    down = fleet.hosts[6]
    staging = fleet.write_fabric_yaml(tmp_path / "staging.yaml", extra={"murder": murder})
    (tmp_path / "fabfile.py").write_text(
        "from invoke import Collection\nimport fabmurder\n"
        "ns = Collection()\nns.add_collection(fabmurder.ns, name='murder')\n"
    )
    fleet.stop_sshd(down)
    try:
        out = subprocess.run(
            [str(Path(sys.executable).with_name("fab")), "-f", str(staging), "murder.stop"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    finally:
        fleet.start_sshd(down)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"murder: stopping failed on {down.host_string}" in out.stderr, out.stderr
    # the tracker and the seeder stopped although a peer could not be reached
    for host in [h for h in fleet.hosts[:9] if h.name != down.name]:
        assert agent_processes(fleet, host) == [], host.name
    assert "no tracker or seed running" not in out.stdout, out.stdout
    again = pipeline.stop(c, on_event=lambda event: None)
    assert not again.failed and agent_processes(fleet, down) == []
    pipeline.clean_temp_files(c)
