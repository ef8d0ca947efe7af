"""Releases on the real fleet: the example environments through ``fab``, publish, rollback, cleanup.

Host 1 is the build host (tracker and seeder) of every environment here.
The example's staging peers are hosts 2-3 and its production peers hosts
4-7, reached through an SSH config that maps the example's host names to
the fleet (``fab -S``), exactly as a user's ``~/.ssh/config`` would. The
function-layer tests use hosts 8-9 with their own ``destination_path``.
Agent and temp files live where the pipeline tests keep them, so the
agent is installed once per session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Context

from fabmurder import pipeline, releases
from fabmurder.errors import DeployError
from fabmurder.testing.fleet import Fleet, Host

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
AGENT = "/srv/fabmurder/agent"
TEMP = "/srv/fabmurder/tmp"
BUILD = "/srv/build"
APP = "/srv/app"  # the example configs' destination_path
REL = "/srv/layout"  # the function-layer tests' destination_path
CLEAN = "/srv/layout-cleanup"  # the cleanup test's, so that no other test's releases count

MAKE_BUILD = r"""
set -e
rm -rf "$1" && mkdir -p "$1/bin" "$1/static"
printf '%s\n' "$2" > "$1/VERSION"
printf '#!/bin/sh\necho app\n' > "$1/bin/app" && chmod 755 "$1/bin/app"
head -c 65536 /dev/urandom > "$1/static/blob"
"""

#: host index -> the example configs' host names for it
ALIASES = {
    0: ["build.staging", "build.prod"],
    1: ["app1.staging"],
    2: ["app2.staging"],
    3: ["web1.prod"],
    4: ["web2.prod"],
    5: ["web3.prod"],
    6: ["web4.prod"],
}


@pytest.fixture(scope="module")
def build(fleet: Fleet) -> Iterator[Host]:
    """Put a small build on the build host and return that host.

    The deploys leave their tracker running, as they should; it is stopped
    at the end, so that later tests find the tracker port free.
    """
    host = fleet.hosts[0]
    fleet.run_in(host, ["sh", "-c", MAKE_BUILD, "make-build", BUILD, "1.0"])
    yield host
    config = fleet.fabric_config()
    config["murder"] = {"tracker": host.host_string, "remote_path": AGENT, "temp_path": TEMP}
    pipeline.stop_tracker(Context(config=config))


@pytest.fixture(scope="module")
def ssh_config(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the SSH config a user of the examples would have, pointing at the fleet."""
    lines = []
    for index, names in ALIASES.items():
        lines += [f"Host {' '.join(names)}", f"    HostName {fleet.hosts[index].address}"]
    lines += [
        "Host *",
        "    User root",
        f"    IdentityFile {fleet.key_path}",
        "    IdentitiesOnly yes",
        # fabmurder checks host keys strictly: the fleet's keys, as a user's known_hosts
        f"    UserKnownHostsFile {fleet.known_hosts_path}",
    ]
    path = tmp_path_factory.mktemp("ssh") / "config"
    path.write_text("\n".join(lines) + "\n")
    return path


def fab(ssh_config: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``fab`` in the examples directory, as a user would."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # one-off overrides: keys the environment files do not set
        "FABRIC_MURDER_WHEEL_DIR": str(wheels),
        "FABRIC_MURDER_POLL_INTERVAL": "0.5",
    }
    command = [str(Path(sys.executable).with_name("fab")), "-S", str(ssh_config), *args]
    return subprocess.run(
        command, cwd=EXAMPLES, capture_output=True, text=True, timeout=300, env=env
    )


def current(fleet: Fleet, host: Host, dest: str = APP) -> str:
    return fleet.run_in(host, ["readlink", f"{dest}/current"], check=False).stdout.strip()


def listing(fleet: Fleet, host: Host, path: str) -> list[str]:
    """List a directory on a host, without hidden entries (the agent's digest records)."""
    return sorted(fleet.run_in(host, ["ls", path], check=False).stdout.split())


def log_lines(fleet: Fleet, host: Host, dest: str = APP) -> list[str]:
    return fleet.run_in(host, ["cat", f"{dest}/revisions.log"], check=False).stdout.splitlines()


def test_staging_and_production_deploy_with_the_same_fabfile_through_fab(
    fleet: Fleet, build: Host, ssh_config: Path, wheels: Path
) -> None:
    staging, production = fleet.hosts[1:3], fleet.hosts[3:7]
    # the first deploy of each environment, of build 1.0, whatever ran before
    fleet.run_in(build, ["sh", "-c", f"printf '1.0\\n' > {BUILD}/VERSION"])
    for host in [*staging, *production]:
        fleet.run_in(host, ["rm", "-rf", APP])
    out = fab(ssh_config, wheels, "-f", "deploy/staging.yaml", "deploy", "--tag", "s1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "build of 3 entries is ready" in out.stdout  # the pre-task ran
    assert "release s1: 2 of 2 peer(s) ok" in out.stdout
    for host in staging:
        assert current(fleet, host) == "releases/s1"
        assert fleet.run_in(host, ["cat", f"{APP}/LIVE"]).stdout == "releases/s1\n"  # the hook
        assert fleet.run_in(host, ["cat", f"{APP}/current/VERSION"]).stdout == "1.0\n"
        (line,) = log_lines(fleet, host)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ deploy s1 by \S+@\S+", line), line
    for host in production:
        assert listing(fleet, host, APP) == []

    out = fab(ssh_config, wheels, "-f", "deploy/production.yaml", "deploy", "--tag", "p1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "release p1: 4 of 4 peer(s) ok" in out.stdout
    for host in production:
        assert current(fleet, host) == "releases/p1"
        assert listing(fleet, host, f"{APP}/releases") == ["p1"]
    for host in staging:
        assert current(fleet, host) == "releases/s1"  # the other environment is untouched


def test_the_canary_example_publishes_in_checked_batches_and_rollback_undoes_it(
    fleet: Fleet, build: Host, ssh_config: Path, wheels: Path
) -> None:
    staging = fleet.hosts[1:3]
    if current(fleet, staging[0]) != "releases/s1":  # run on its own
        out = fab(ssh_config, wheels, "-f", "deploy/staging.yaml", "deploy", "--tag", "s1")
        assert out.returncode == 0, out.stdout + out.stderr
    fleet.run_in(build, ["sh", "-c", f"printf '1.1\\n' > {BUILD}/VERSION"])
    out = fab(ssh_config, wheels, "-f", "deploy/staging.yaml", "canary", "--tag", "s2")
    assert out.returncode == 0, out.stdout + out.stderr
    # one peer at a time, each checked, then restarted by the example's published hook
    assert out.stdout.index("batch 1 of 2: app1.staging") < out.stdout.index("batch 2 of 2")
    assert "[app2.staging] restarted on releases/s2" in out.stdout
    for host in staging:
        assert current(fleet, host) == "releases/s2"
        assert fleet.run_in(host, ["cat", f"{APP}/current/VERSION"]).stdout == "1.1\n"

    out = fab(ssh_config, wheels, "-f", "deploy/staging.yaml", "murder.rollback")
    assert out.returncode == 0, out.stdout + out.stderr
    for host in staging:
        assert current(fleet, host) == "releases/s1"
        assert listing(fleet, host, f"{APP}/releases") == ["s1", "s2"]
        words = log_lines(fleet, host)[-1].split()
        assert words[1:4] + words[-2:] == ["rollback", "s1", "by", "(was", "s2)"]
        actions = [line.split()[1:3] for line in log_lines(fleet, host)]
        assert actions == [["deploy", "s1"], ["deploy", "s2"], ["rollback", "s1"]]

    out = fab(ssh_config, wheels, "-f", "deploy/staging.yaml", "murder.status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\[app1\.staging\] peer: .*current: s1; releases: s1, s2", out.stdout)
    assert re.search(r"\[build\.staging\] tracker\+seeder: running: tracker", out.stdout)


def make_release(fleet: Fleet, hosts: list[Host], tag: str, mtime: float, dest: str = REL) -> None:
    """Land a release the way a deploy leaves it, with a given age (mtime, no log line)."""
    for host in hosts:
        path = f"{dest}/releases/{tag}"
        fleet.run_in(host, ["sh", "-c", f"mkdir -p {path} && echo {tag} > {path}/VERSION"])
        fleet.run_in(host, ["touch", "-d", f"@{mtime}", path])


def context(fleet: Fleet, dest: str) -> Context:
    """Return a Context whose ``murder`` config manages releases under ``dest`` on hosts 8-9.

    Landing releases is the deploy tests' business; here they are made
    directly on the hosts, which keeps these tests fast. ``dest`` starts empty.
    """
    for host in fleet.hosts[7:9]:
        fleet.run_in(host, ["rm", "-rf", dest])
    config = fleet.fabric_config()
    peers = [h.host_string for h in fleet.hosts[7:9]]
    config["murder"] = {"peers": peers, "destination_path": dest}
    return Context(config=config)


@pytest.fixture
def rel(fleet: Fleet) -> Context:
    return context(fleet, REL)


def test_publish_and_rollback_switch_current_and_refuse_what_they_cannot_do(
    fleet: Fleet, rel: Context
) -> None:
    a, b = fleet.hosts[7:9]
    stamp = time.time() - 3600
    make_release(fleet, [a, b], "a1", stamp)
    assert releases.publish(rel, "a1") == {a.host_string: None, b.host_string: None}
    # only one release: nothing to roll back to, and nothing changes
    with pytest.raises(DeployError, match="cannot roll back on 2 host") as caught:
        releases.rollback(rel)
    assert "no release before 'a1'" in caught.value.failures[a.host_string]
    assert [current(fleet, h, REL) for h in (a, b)] == ["releases/a1"] * 2

    make_release(fleet, [a, b], "a2", stamp + 10)
    assert releases.publish(rel, "a2", action="deploy") == {
        a.host_string: "a1",
        b.host_string: "a1",
    }
    assert [current(fleet, h, REL) for h in (a, b)] == ["releases/a2"] * 2

    # a release that is missing on one peer is refused everywhere
    make_release(fleet, [a], "only-a", stamp + 20)
    with pytest.raises(DeployError, match="nothing was switched") as caught:
        releases.publish(rel, "only-a")
    assert list(caught.value.failures) == [b.host_string]
    assert current(fleet, a, REL) == "releases/a2"
    fleet.run_in(a, ["rm", "-r", f"{REL}/releases/only-a"])

    assert releases.rollback(rel) == {a.host_string: "a2", b.host_string: "a2"}
    assert [current(fleet, h, REL) for h in (a, b)] == ["releases/a1"] * 2
    assert fleet.run_in(a, ["cat", f"{REL}/current/VERSION"]).stdout == "a1\n"
    assert listing(fleet, a, f"{REL}/releases") == ["a1", "a2"]  # the old release stays
    actions = [line.split()[1:3] for line in log_lines(fleet, b, REL)]
    assert actions == [["publish", "a1"], ["deploy", "a2"], ["rollback", "a1"]]
    with pytest.raises(DeployError, match="cannot roll back"):
        releases.rollback(rel)

    assert releases.publish(rel, "a2") == {a.host_string: "a1", b.host_string: "a1"}
    assert log_lines(fleet, a, REL)[-1].split()[1:3] == ["publish", "a2"]

    # after a release reached one host only, rollback undoes it there; the other stays
    make_release(fleet, [a], "a3", stamp + 30)
    releases.publish(rel, "a3", hosts=[a.host_string])
    assert releases.rollback(rel) == {a.host_string: "a3"}
    assert [current(fleet, h, REL) for h in (a, b)] == ["releases/a2", "releases/a2"]
    # rollback --to: every host to that release, or none when one lacks it
    with pytest.raises(DeployError, match="cannot roll back on 1 host") as caught:
        releases.rollback(rel, "a3")
    assert caught.value.failures == {b.host_string: f"release 'a3' is not in {REL}/releases"}
    assert releases.rollback(rel, "a1") == {a.host_string: "a2", b.host_string: "a2"}
    assert [current(fleet, h, REL) for h in (a, b)] == ["releases/a1", "releases/a1"]


def test_cleanup_keeps_the_newest_and_the_current_release_even_when_it_is_old(
    fleet: Fleet,
) -> None:
    a, b = fleet.hosts[7:9]
    rel = context(fleet, CLEAN)
    stamp = time.time() - 1800
    for offset, tag in ((0, "c1"), (10, "c2"), (20, "c3"), (30, "c4")):
        make_release(fleet, [a, b], tag, stamp + offset, CLEAN)
    for host in (a, b):
        fleet.run_in(
            host, ["sh", "-c", f"echo mine > {CLEAN}/keep-me; : > {CLEAN}/releases/.c2.sha256"]
        )
    releases.publish(rel, "c1")  # current now points at an old release

    removed = releases.cleanup(rel, 2)
    assert removed == {a.host_string: ["c2"], b.host_string: ["c2"]}
    for host in (a, b):
        assert listing(fleet, host, f"{CLEAN}/releases") == ["c1", "c3", "c4"]
        assert fleet.run_in(host, ["ls", "-A", f"{CLEAN}/releases"]).stdout.split() == [
            "c1",
            "c3",
            "c4",
        ]  # the digest record went with its release
        assert current(fleet, host, CLEAN) == "releases/c1"
        assert listing(fleet, host, CLEAN) == ["current", "keep-me", "releases", "revisions.log"]
    assert releases.cleanup(rel, 2) == {a.host_string: [], b.host_string: []}

    state = releases.status(rel)
    assert state[a.host_string]["layout"] == {
        "current": "c1",
        "releases": ["c1", "c3", "c4"],
        "previous": None,
    }
