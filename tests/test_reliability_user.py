"""Nothing needs root on the hosts: setup, deploy and stop as an ordinary SSH user, no sudo.

The user exists on this machine (the hosts share its ``/etc/passwd``) with
its home under each host's private ``/srv``; its SSH key sits in that home,
where the fleet's sshd looks for a host's own users' keys.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from invoke import Context

from fabmurder import pipeline, releases
from fabmurder.errors import DeployError
from fabmurder.testing.fleet import Fleet, down, sibling_name, up

USER = "fmdeploy"
HOME = f"/srv/home/{USER}"
#: on each host: the user's home and key, and a release to ship from the seeder
PREPARE = r"""
set -e
install -d -m 755 /srv/home
install -d -o "$1" -g "$1" -m 700 "$2" "$2/.ssh" "$2/build"
printf '%s\n' "$3" > "$2/.ssh/authorized_keys"
printf 'v1\n' > "$2/build/app.txt"
chown "$1:$1" "$2/.ssh/authorized_keys" "$2/build/app.txt"
chmod 600 "$2/.ssh/authorized_keys"
install -d -m 755 /srv/rootowned
"""


@pytest.fixture(scope="module")
def users(require_root: None) -> Iterator[Fleet]:
    """A three-host fleet where USER can log in (the user is removed again if we made it)."""
    made = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            # "*": no password, but not locked ("!"), which sshd would refuse
            ["useradd", "--system", "--user-group", "--home-dir", HOME, "--no-create-home",
             "--shell", "/bin/bash", "--password", "*", USER],
            check=True,
        )  # fmt: skip
        made = True
    # named after the session's fleet, so that other sessions never touch it
    fleet = up(3, name=sibling_name(os.environ.get("FABMURDER_FLEET_NAME", "test"), "us"))
    try:
        key = fleet.key_path.with_name(fleet.key_path.name + ".pub").read_text().strip()
        for host in fleet.hosts:
            fleet.run_in(host, ["sh", "-c", PREPARE, "prepare", USER, HOME, key])
        yield fleet
    finally:
        down(fleet.name)
        if made:
            subprocess.run(["userdel", USER], check=False)


def context(fleet: Fleet, **extra: Any) -> Context:
    hosts = [f"{USER}@{h.address}:{h.port}" for h in fleet.hosts]
    config = fleet.fabric_config()
    config["murder"] = {
        "known_hosts": str(fleet.known_hosts_path),
        "tracker": hosts[0],
        "seeder": hosts[0],
        "peers": hosts[1:],
        "python": "/usr/bin/python3",
        "remote_path": f"{HOME}/agent",
        "temp_path": f"{HOME}/tmp",
        "files_path": f"{HOME}/build",
        "destination_path": f"{HOME}/app",
        "timeout": 60,
        "seed_after": 2,
        **extra,
    }
    return Context(config=config)


def test_an_ordinary_user_installs_deploys_and_stops_without_root(users: Fleet) -> None:
    c = context(users)
    assert sorted(pipeline.setup(c).values()) == ["installed"] * 3
    deployed = releases.deploy(c, tag="u1")
    assert deployed.report.failures == {} and len(deployed.report.succeeded) == 2
    for host in users.hosts[1:]:
        assert users.run_in(host, ["readlink", f"{HOME}/app/current"]).stdout == "releases/u1\n"
        assert users.run_in(host, ["cat", f"{HOME}/app/current/app.txt"]).stdout == "v1\n"
    for host in users.hosts:
        # everything fabmurder wrote belongs to the user: nothing ran as root
        foreign = users.run_in(host, ["find", HOME, "!", "-user", USER]).stdout
        assert foreign == "", (host.name, foreign)
    # the tracker, left running for the next deploy, runs as the user too
    record = json.loads(users.run_in(users.hosts[0], ["cat", f"{HOME}/tmp/tracker.pid"]).stdout)
    assert os.stat(f"/proc/{record['pid']}").st_uid == pwd.getpwnam(USER).pw_uid
    stopped = pipeline.stop_tracker(c)
    assert [r["pid"] for records in stopped.values() for r in records] == [record["pid"]]


def test_a_path_the_user_cannot_write_fails_setup_by_name(users: Fleet) -> None:
    c = context(users, remote_path="/srv/rootowned/agent")
    with pytest.raises(DeployError) as caught:
        pipeline.setup(c)
    assert len(caught.value.failures) == 3
    for reason in caught.value.failures.values():
        assert "Permission denied" in reason, reason
    assert users.run_in(users.hosts[1], ["ls", "-A", "/srv/rootowned"]).stdout == ""
