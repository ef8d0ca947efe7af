"""Hardening on the fleet: a second, unprivileged local user on the hosts gets nothing.

Each test plays one finding of issue #12 as that user (``INTRUDER``, made on
this machine, whose ``/etc/passwd`` the hosts share, and entered on a host
with ``setpriv``), or looks at the hosts directly, never through what the
pipeline says about itself. The fleet is this module's own, with
``/root/.cache`` private to each host as on real machines, so that the default
``temp_path`` (``~/.cache/fabmurder/tmp``) is each host's own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invoke import Context

from fabmurder import install, overview, pipeline
from fabmurder.config import settings
from fabmurder.errors import ConfigError, DeployError
from fabmurder.plan import Plan
from fabmurder.probe import Probe
from fabmurder.remote import agent_command, feeding
from fabmurder.testing.deploykit import AGENT, AGENT_PYTHON, DeployKit
from fabmurder.testing.fleet import Fleet, down, sibling_name, up
from fabmurder.testing.proc import wait_until

INTRUDER = "fmintruder"
#: the old default temp_path: a directory any local user can make first
SHARED_TEMP = "/tmp/fabmurder"
DEFAULT_TEMP = "/root/.cache/fabmurder/tmp"
SIZE = 256 * 1024


@pytest.fixture(scope="module")
def intruder(require_root: None) -> Iterator[str]:
    """The unprivileged local user (removed again if this module made it)."""
    made = False
    try:
        pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh",
             INTRUDER],
            check=True,
        )  # fmt: skip
        made = True
    try:
        yield INTRUDER
    finally:
        if made:
            subprocess.run(["userdel", INTRUDER], check=False)


@pytest.fixture(scope="module")
def kit(require_root: None, wheels: Path, intruder: str) -> Iterator[DeployKit]:
    """Five hosts of this module's own, the agent on each, ``/root/.cache`` private to each."""
    name = sibling_name(os.environ.get("FABMURDER_FLEET_NAME", "test"), "hf")
    # /root/.cache of its own on each host (the default temp_path is under it);
    # the rest of /root holds this machine's Python, which the hosts run too
    fleet = up(5, name=name, private_dirs=("/srv", "/tmp", "/root/.cache"))
    try:
        deploy_kit = DeployKit(fleet, str(wheels))
        pipeline.setup(deploy_kit.context(deploy_kit.murder(peers=range(2, 6))))
        yield deploy_kit
    finally:
        down(name)


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    yield
    for temp in (kit.temp_path, DEFAULT_TEMP, SHARED_TEMP):
        dataclasses.replace(kit, temp_path=temp).reset(range(1, 6))


def as_intruder(
    fleet: Fleet, host: int, script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` on ``host`` as the unprivileged local user."""
    argv = ["setpriv", f"--reuid={INTRUDER}", f"--regid={INTRUDER}", "--init-groups",
            "sh", "-c", script, "sh", *args]  # fmt: skip
    return fleet.run_in(host, argv, check=False)


def mode(kit: DeployKit, host: int, path: str) -> int:
    return int(kit.sh(host, 'stat -c %a -- "$1"', path).strip(), 8)


def deploy_context(kit: DeployKit, **extra: Any) -> Context:
    return kit.context(kit.murder(peers=(2, 3), **extra))


# -- temp_path -------------------------------------------------------------------------------


def test_a_shared_system_temp_path_is_refused_before_anything_runs() -> None:
    for shared in ("/tmp", "/var/tmp/", "/dev/shm", "/", "/home", "~/", "~/.."):
        with pytest.raises(ConfigError, match="temp_path") as caught:
            settings(Context(), temp_path=shared)
        assert caught.value.key == "temp_path"
    assert settings(Context()).temp_path == "~/.cache/fabmurder/tmp"


def test_the_default_temp_path_is_each_deploy_users_own_and_private(kit: DeployKit) -> None:
    kit.make_tree(1, kit.files_path, SIZE)
    murder = kit.murder(peers=(2, 3))
    del murder["temp_path"]
    report = pipeline.distribute_files(kit.context(murder), tag="d1")
    assert report.failures == {}
    for host in (1, 2, 3):
        assert mode(kit, host, DEFAULT_TEMP) == 0o700, host
        assert kit.sh(host, 'stat -c %U -- "$1"', DEFAULT_TEMP).strip() == "root"
        assert not kit.sh(host, f"ls -A {SHARED_TEMP} 2>/dev/null || true").strip(), host
    # the intruder cannot even look inside
    assert as_intruder(kit.fleet, 1, f"ls {DEFAULT_TEMP}").returncode != 0


def test_a_temp_path_a_local_user_made_first_is_refused_and_gets_nothing(kit: DeployKit) -> None:
    kit.make_tree(1, kit.files_path, SIZE)
    for host in (1, 2, 3):
        made = as_intruder(kit.fleet, host, 'mkdir -m 777 -- "$1"', SHARED_TEMP)
        assert made.returncode == 0, made.stderr
    with pytest.raises(Exception, match="belongs to uid") as caught:
        pipeline.distribute_files(deploy_context(kit, temp_path=SHARED_TEMP), tag="d2")
    assert "/tmp/fabmurder" in str(caught.value)
    for host in (1, 2, 3):
        # nothing of the deploy user's landed in the intruder's directory
        assert kit.sh(host, f"find {SHARED_TEMP} -mindepth 1 -user root").strip() == "", host


def test_a_remote_path_a_local_user_made_first_is_refused_before_a_wheel_is_uploaded(
    kit: DeployKit,
) -> None:
    # /tmp is world-writable (sticky): a local user can make the agent's directory first
    planted = "/tmp/fm-agent"
    for host in (2, 3):
        made = as_intruder(kit.fleet, host, 'mkdir -m 755 -- "$1"', planted)
        assert made.returncode == 0, made.stderr
    murder = {**kit.murder(peers=(2, 3)), "remote_path": planted}
    try:
        with pytest.raises(DeployError, match="setup failed on 2 host") as caught:
            pipeline.setup(kit.context(murder))
        for reason in caught.value.failures.values():
            assert reason.startswith(f"remote_path: fabmurder: {planted} belongs to uid"), reason
        for host in (2, 3):
            # setup wrote nothing into the intruder's directory: no wheels, no venv
            assert kit.sh(host, f"find {planted} -mindepth 1").strip() == "", host
        # a fresh one is made 0700, the deploy user's own
        fresh = {
            **murder,
            "remote_path": "/srv/fabmurder/fresh-agent",
            "peers": [murder["peers"][0]],
        }
        pipeline.setup(kit.context(fresh))
        assert mode(kit, 2, "/srv/fabmurder/fresh-agent") == 0o700
    finally:
        for host in (2, 3):
            kit.sh(host, f"rm -rf {planted} /srv/fabmurder/fresh-agent")


# -- secrets ---------------------------------------------------------------------------------


def command_lines(kit: DeployKit, host: int) -> str:
    """Return every command line on ``host`` as the intruder's ``ps`` shows them."""
    return as_intruder(kit.fleet, host, "ps -eww -o args").stdout  # -ww: never cut


def test_the_tracker_token_is_on_no_command_line_and_opens_no_swarm(kit: DeployKit) -> None:
    c = deploy_context(kit)
    pipeline.start_tracker(c)
    temp = kit.temp_path
    token = kit.sh(1, f"cat {temp}/tracker.token").strip()
    assert len(token) == 32
    assert mode(kit, 1, f"{temp}/tracker.token") == 0o600
    lines = command_lines(kit, 1)
    assert "-- tracker --bind" in lines and "--token-file" in lines
    assert token not in lines
    # a local user who learnt the token all the same: /stats yes, a swarm no
    registered = "ab" * 20
    kit.sh(1, f"{AGENT_PYTHON} -m fabmurder allow --file {temp}/tracker.allow "
              f"--add {registered} --token deploytok")  # fmt: skip
    base = f"http://{kit.fleet.host(1).address}:{kit.tracker_port}"
    assert kit.http_get(1, f"{base}/stats/{token}")[0] == 200
    query = "?info_hash=" + "%ab" * 20 + "&peer_id=" + "x" * 20 + "&port=7000&left=5"
    for path in (f"/announce/{token}{query}", f"/scrape/{token}?info_hash=" + "%ab" * 20):
        assert kit.http_get(1, base + path)[0] == 404, path
    assert kit.http_get(1, f"{base}/announce/deploytok{query}")[0] == 200


def test_a_failed_stats_read_names_no_token_in_murder_status(kit: DeployKit) -> None:
    c = deploy_context(kit)
    pipeline.start_tracker(c)
    token = kit.sh(1, f"cat {kit.temp_path}/tracker.token").strip()
    pid = kit.pid(1, "tracker.pid")
    assert pid
    kit.sh(1, f"kill -STOP {pid}")  # alive, but it answers nothing: the stats read times out
    try:
        state = overview.status(c)
    finally:
        kit.sh(1, f"kill -CONT {pid}")
    error = str(state["tracker"].get("error"))
    assert "/stats/<token>" in error, state["tracker"]
    assert token not in json.dumps(state)


# -- files on the hosts ----------------------------------------------------------------------


def test_a_release_in_flight_is_private_on_the_seeder_and_the_peers(
    kit: DeployKit, tmp_path: Path
) -> None:
    build = tmp_path / "build"
    (build / "etc").mkdir(parents=True)
    (build / "etc" / "secret.conf").write_text("password\n")
    (build / "etc" / "secret.conf").chmod(0o600)
    (build / "blob.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    kit.cap_download(3, 2000)  # slow enough to look at the peer mid-download
    try:
        run = kit.background(
            pipeline.distribute_files, deploy_context(kit, local_path=str(build)), tag="f1"
        )
        temp = kit.temp_path
        wait_until(
            lambda: kit.sh(3, f"test -e {temp}/f1.tar && echo yes || true").strip(),
            timeout=60, what="the peer's download to begin",
        )  # fmt: skip
        for host, names in ((1, ["f1.tar", "f1.torrent"]), (3, ["f1.tar", "f1.torrent"])):
            assert mode(kit, host, temp) == 0o700, host
            for name in names:
                assert mode(kit, host, f"{temp}/{name}") == 0o600, (host, name)
                read = as_intruder(kit.fleet, host, 'cat -- "$1" >/dev/null', f"{temp}/{name}")
                assert read.returncode != 0 and "Permission denied" in read.stderr
        kit.cap_download(3, None)
        report = run.result(90)
        assert report.failures == {}
    finally:
        kit.cap_download(3, None)


def test_a_json_py_in_the_login_directory_does_not_take_over_host_commands(
    kit: DeployKit,
) -> None:
    # The login directory is root's home here, which the fleet's hosts share
    # with this machine: the planted module goes into a directory of the
    # host's own, and the command starts there, as it would in a home.
    login = "/srv/login"
    hijack = "import pathlib; pathlib.Path('/srv/hijacked').write_text('yes')\n"
    kit.write_bytes(2, f"{login}/json.py", hijack.encode())
    kit.sh(2, f"chmod 777 {login}")  # the intruder's doing, say
    s = settings(deploy_context(kit))
    command = agent_command(s, "status", "--temp-path", s.temp_path)
    with kit.fleet.connection(2) as conn:
        result = conn.run(f"cd {login} && {command}", hide=True, warn=True)
    assert result.exited == 0, result.stderr
    assert json.loads(result.stdout)["temp_path"] == s.temp_path
    assert kit.sh(2, "cat /srv/hijacked 2>/dev/null || true") == ""
    kit.sh(2, f"rm -rf {login} /srv/hijacked")


# -- who may join ----------------------------------------------------------------------------


def test_the_agents_allow_list_holds_the_swarm_and_the_tracker_only_as_one_of_it() -> None:
    hosts = {"tr": "10.9.0.1", "sd": "10.9.0.2", "p1": "10.9.0.3", "p2": "10.9.0.5"}
    s = settings(Context(), tracker="tr", seeder="sd", peers=["p1", "p2"])
    plan = Plan(s, Probe(addresses=hosts))
    allowed = plan.allow_networks
    assert allowed == ("10.9.0.2/31", "10.9.0.5/32")
    assert "10.9.0.1" not in " ".join(allowed)
    # a tracker that is the seeder too is in the swarm
    same = Plan(
        settings(Context(), tracker="sd", seeder="sd", peers=["p1"]), Probe(addresses=hosts)
    )
    assert same.allow_networks == ("10.9.0.2/31",)


# -- the agent install -----------------------------------------------------------------------


def test_a_changed_agent_venv_is_reported_by_status_and_reinstalled_by_setup(
    kit: DeployKit,
) -> None:
    c = deploy_context(kit)
    host = kit.fleet.host(2).host_string
    assert overview.status(c)[host]["venv"] == "ok"
    site = kit.sh(
        2,
        f"{AGENT_PYTHON} -I -c 'import fabmurder, os; print(os.path.dirname(fabmurder.__file__))'",
    )
    target = f"{site.strip()}/redact.py"
    kit.sh(2, f"printf '\\n# changed\\n' >> {target}")
    venv = overview.status(c)[host]["venv"]
    assert venv.startswith("changed") and "fabmurder/redact.py" in venv, venv
    result = pipeline.setup(c)
    assert result[host].startswith("reinstalled (the venv had changed: "), result[host]
    assert "# changed" not in kit.sh(2, f"cat {target}")
    assert overview.status(c)[host]["venv"] == "ok"
    assert kit.sh(2, f"test -f {AGENT}/{install.FILES_LIST} && echo yes").strip() == "yes"


def test_a_torrent_of_any_size_travels_on_stdin_and_lands_0600(kit: DeployKit) -> None:
    from fabmurder import daemons

    s = settings(kit.context(kit.murder(peers=(2,))), tag="big1")
    big = os.urandom(300 * 1024)  # over Linux's 128 KiB limit of one argument
    with kit.fleet.connection(2) as conn:
        local = Path(kit.fleet.state_dir) / "big.torrent"
        local.write_bytes(big)
        step, files, text = daemons.place_files(s, local, "10.0.0.1/32\n")
        assert text not in " ".join([step, *files])
        result = conn.run(f"{step} && {agent_command(s, 'put', *files)}", **feeding(text))
        assert result.exited == 0, result.stderr
    path = f"{kit.temp_path}/big1.torrent"
    assert kit.read_bytes(2, path) == big
    assert mode(kit, 2, path) == 0o600 and mode(kit, 2, kit.temp_path) == 0o700
