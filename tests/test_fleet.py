"""The local fleet: real sshd hosts in network namespaces behave like separate servers."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
from fabric import Connection

from fabmurder.testing import Fleet, FleetError, down, hostinit, net, up
from fabmurder.testing.fleet import Host, load, sibling_name
from fabmurder.testing.net import RUN_DIR, choose_subnet, leftovers, netns_pids
from fabmurder.testing.proc import is_alive, wait_until

# benchmarks/ is a top-level package of the repository, not of the installed project.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.mesh import MESH  # noqa: E402

RATE_MBIT = 100
#: this session's fleet name: the extra fleets here are named after it, so that
#: sessions with other names (other checkouts, other users) never touch them
SESSION = os.environ.get("FABMURDER_FLEET_NAME", "test")


def own(suffix: str) -> str:
    """Return the name of this session's extra fleet ``suffix``."""
    return sibling_name(SESSION, suffix)


@pytest.fixture
def small(require_root: None) -> Iterator[Fleet]:
    """A fresh two-host fleet of its own, for tests that break or inspect new hosts."""
    fleet = up(2, name=own("fr"), private_dirs=("/srv", "/tmp", "/mnt"))
    try:
        yield fleet
    finally:
        down(fleet.name)


@pytest.fixture(scope="module")
def capped(require_root: None) -> Iterator[Fleet]:
    fleet = up(2, rate_mbit=RATE_MBIT, name=own("ca"))
    try:
        yield fleet
    finally:
        down(fleet.name)


#: a barrier: each host checks in, then waits until every host has (at most 60 s)
BARRIER = """
touch "$1/$(hostname)"
tries=0
while [ "$(ls -- "$1" | wc -l)" -lt "$2" ]; do
    tries=$((tries + 1)); [ "$tries" -le 600 ] || exit 7
    sleep 0.1
done
hostname
"""


def test_every_host_answers_fabric_over_ssh_in_parallel(fleet: Fleet) -> None:
    assert len(fleet.hosts) >= 2
    # The hosts share this machine's /run. Run serially, the first host would wait
    # for the others in vain: each command ends only once every host's has begun.
    barrier = Path(tempfile.mkdtemp(prefix="barrier-", dir=fleet.state_dir))
    try:
        command = f"sh -c {shlex.quote(BARRIER)} barrier {barrier} {len(fleet.hosts)}"
        results = fleet.group().run(command, hide=True, warn=True)
    finally:
        shutil.rmtree(barrier)
    assert sorted(c.host for c in results) == sorted(fleet.addresses)
    assert all(r.ok for r in results.values()), {c.host: r.exited for c, r in results.items()}
    assert {c.host: r.stdout.strip() for c, r in results.items()} == {
        h.address: h.name for h in fleet.hosts
    }


def test_connections_check_host_keys_strictly(fleet: Fleet) -> None:
    assert fleet.connection(1).run("true", hide=True).ok
    stranger = Connection(fleet.hosts[0].address, config=fleet.fabric_config())
    stranger.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        stranger.run("true", hide=True)


def test_each_host_has_its_own_address(fleet: Fleet) -> None:
    results = fleet.group().run("ip -4 -o addr show dev eth0", hide=True)
    seen = {c.host: r.stdout.split()[3].split("/")[0] for c, r in results.items()}
    assert seen == {a: a for a in fleet.addresses}
    assert len(set(fleet.addresses)) == len(fleet.hosts)
    assert fleet.control_address not in fleet.addresses


def test_a_file_written_on_one_host_is_absent_on_the_others(fleet: Fleet) -> None:
    marker = f"fleet-test-{uuid.uuid4().hex}"
    writer, *others = fleet.hosts
    fleet.connection(writer).run(f"touch /srv/{marker} /tmp/{marker}")
    try:
        assert fleet.run_in(writer, ["test", "-e", f"/srv/{marker}"], check=False).returncode == 0
        results = fleet.group(others).run(
            f"test -e /srv/{marker} || test -e /tmp/{marker}", warn=True, hide=True
        )
        assert [r.exited for r in results.values()] == [1] * len(others)
        assert not Path(f"/srv/{marker}").exists()
        assert not Path(f"/tmp/{marker}").exists()
    finally:
        fleet.connection(writer).run(f"rm -f /srv/{marker} /tmp/{marker}")


def test_the_login_shell_runs_debians_default_bashrc_not_this_machines(fleet: Fleet) -> None:
    """A fresh server's root has Debian's .bashrc; this machine's may run pyenv init (125 ms)."""
    default = next(Path(p) for p in hostinit.DEFAULT_BASHRC if Path(p).is_file())
    results = fleet.group().run("cat ~/.bashrc", hide=True)
    assert {r.stdout for r in results.values()} == {default.read_text()}
    # and the host cannot change this machine's file through it
    write = fleet.connection(1).run("echo x >> ~/.bashrc", hide=True, warn=True)
    assert write.exited != 0
    assert "Read-only file system" in write.stderr


def test_new_hosts_start_with_an_empty_srv_and_tmp(small: Fleet) -> None:
    results = small.group().run("ls -A /srv /tmp", hide=True)
    for result in results.values():
        assert result.stdout.split() == ["/srv:", "/tmp:"]


def test_extra_private_dirs_are_private_too(small: Fleet) -> None:
    small.connection(1).run("touch /mnt/fleet-test-mark")
    assert small.run_in(2, ["ls", "-A", "/mnt"]).stdout == ""
    assert not Path("/mnt/fleet-test-mark").exists()


def test_runtime_fabric_file_lets_fab_reach_the_hosts(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.write_fabric_yaml(tmp_path / "fleet.yaml")
    hosts = fleet.hosts[:2]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric",
            "-f",
            str(config),
            "-H",
            ",".join(h.address for h in hosts),
        ]
        + ["--", "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [h.name for h in hosts]


def _iperf(fleet: Fleet, reverse: bool) -> float:
    """Measure Mbit/s from host 1 to host 2 (or back with *reverse*)."""
    server = fleet.host(2)
    proc = fleet.popen_in(
        server,
        ["iperf3", "--server", "--bind", server.address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: fleet.run_in(server, ["ss", "-Hltn", "sport = :5201"]).stdout.strip() != "",
            10,
            "iperf3 server to listen",
        )
        argv = ["iperf3", "-c", server.address, "-t", "3", "-O", "1", "-J"]
        out = fleet.run_in(1, [*argv, "-R"] if reverse else argv, timeout=30).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("reverse", [False, True], ids=["upload", "download"])
def test_a_rate_cap_is_never_exceeded_in_either_direction(capped: Fleet, reverse: bool) -> None:
    """The cap holds (load can only slow a link, never speed it up past its cap).

    How close a link comes to its cap is a speed: the benchmark measures it
    (the central push's rate against the cap). The floor here is far below
    it, so load cannot trip it, and still catches a cap of another unit.
    """
    measured = _iperf(capped, reverse)
    assert measured <= RATE_MBIT * 1.15, f"{measured:.1f} Mbit/s"
    assert measured >= RATE_MBIT * 0.25, f"{measured:.1f} Mbit/s"


def test_a_stopped_sshd_refuses_logins_but_the_host_keeps_its_files(small: Fleet) -> None:
    small.connection(1).run("echo kept > /srv/state")
    stopped = small.stop_sshd(1)
    assert stopped.sshd_pid is None
    conn = small.connection(1)
    conn.connect_timeout = 2
    with pytest.raises(OSError):
        conn.run("true")
    assert small.run_in(1, ["cat", "/srv/state"]).stdout == "kept\n"
    started = small.start_sshd(1)
    assert started.sshd_pid is not None and is_alive(started.sshd_pid)
    assert small.connection(1).run("cat /srv/state", hide=True).stdout == "kept\n"


def test_an_unplugged_host_is_unreachable_until_plugged_back(small: Fleet) -> None:
    small.set_link(2, False)
    conn = small.connection(2)
    conn.connect_timeout = 1
    with pytest.raises(OSError):
        conn.run("true")
    small.set_link(2, True)
    assert small.connection(2).run("hostname", hide=True).stdout.strip() == small.host(2).name


def test_a_fleet_can_span_racks_and_every_host_reaches_every_other(require_root: None) -> None:
    fleet = up(7, name=own("rk"), racks=3)
    try:
        nets = [ipaddress.ip_network(f"{a}/24", strict=False) for a in fleet.addresses]
        # Filled one /24 after another: 3, 3 and 1 hosts, each a rack of its own to a tracker.
        assert [str(n) for n in dict.fromkeys(nets)] == [
            str(n) for n in list(ipaddress.ip_network(fleet.subnet).subnets(new_prefix=24))[:3]
        ]
        assert [nets.count(n) for n in dict.fromkeys(nets)] == [3, 3, 1]
        assert fleet.racks == 3 and load(fleet.name).racks == 3
        first, last = fleet.host(1), fleet.host(7)
        # From host 1 in the first /24 to host 7's sshd in the third, over the one link.
        probe = f"exec 3<>/dev/tcp/{last.address}/{last.port} && head -c 4 <&3"
        reached = fleet.connection(first).run(
            f"timeout 5 bash -c {shlex.quote(probe)}", hide=True, warn=True
        )
        assert reached.stdout == "SSH-"
        assert fleet.connection(last).run("hostname", hide=True).stdout.strip() == last.name
    finally:
        down(own("rk"))


def test_every_host_of_an_80_host_fleet_reaches_every_other_one(require_root: None) -> None:
    # 80 hosts in a full mesh need 6,400 ARP entries in the kernel's one table for
    # every namespace; its default cap of 1,024 left the last hosts unreachable.
    fleet = up(80, name=own("ms"), racks=2)
    try:
        room = [int(Path(net.NEIGH_SYSCTL.format(i)).read_text()) for i in (1, 2, 3)]
        assert all(have >= want for have, want in zip(room, net.neighbour_room(80), strict=True))

        def reach(host: Host) -> str:
            others = [a for a in fleet.addresses if a != host.address]
            out = fleet.run_in(host, ["/usr/bin/python3", "-c", MESH, *others]).stdout
            return f"{host.name}: {out.strip()}" if not out.startswith("0 ") else ""

        with ThreadPoolExecutor(8) as threads:
            failures = [line for line in threads.map(reach, fleet.hosts) if line]
        assert not failures, failures[:5]
    finally:
        down(own("ms"))


def test_a_shared_dir_is_the_same_read_only_bytes_on_every_host(
    require_root: None, tmp_path: Path
) -> None:
    with pytest.raises(FleetError, match="hides"):
        up(1, name=own("sx"), shared={"/srv/agent/venv": str(tmp_path)})
    source = Path(tempfile.mkdtemp(dir=RUN_DIR, prefix="test-shared-"))
    (source / "marker").write_text("one copy\n")
    try:
        fleet = up(2, name=own("sh"), shared={"/srv/agent/venv": str(source)})
        for host in (1, 2):
            conn = fleet.connection(host)
            assert conn.run("cat /srv/agent/venv/marker", hide=True).stdout == "one copy\n"
            write = conn.run("touch /srv/agent/venv/x", hide=True, warn=True)
            assert write.failed and "Read-only file system" in write.stderr
            # The rest of /srv stays the host's own.
            conn.run(f"echo {host} > /srv/agent/mine", hide=True)
        assert fleet.connection(1).run("cat /srv/agent/mine", hide=True).stdout == "1\n"
        assert not (source / "x").exists()
        with pytest.raises(FleetError, match="inside a private dir"):
            up(1, name=own("sx"), shared={"/opt/agent": str(source)})
    finally:
        down(own("sh"))
        down(own("sx"))
        shutil.rmtree(source)


def test_fleets_brought_up_together_get_different_subnets(require_root: None) -> None:
    try:
        with ThreadPoolExecutor(2) as pool:
            fleets = list(pool.map(lambda name: up(1, name=name), [own("pa"), own("pb")]))
        assert fleets[0].subnet != fleets[1].subnet
        with pytest.raises(FleetError, match="overlaps"):
            choose_subnet(fleets[0].subnet)
    finally:
        down(own("pa"))
        down(own("pb"))


def _traces(fleet: Fleet) -> dict[str, object]:
    """Return everything of *fleet* still on this machine."""
    namespaces, links = leftovers(fleet.name)
    live = [p for h in fleet.hosts for p in (h.pid, h.sshd_pid) if p and is_alive(p)]
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and str(fleet.state_dir).encode() in cmdline and is_alive(int(entry)):
            live.append(int(entry))
    return {
        "namespaces": namespaces,
        "links": links,
        "processes": live,
        "state_dir": fleet.state_dir.exists(),
    }


def test_down_leaves_no_namespace_bridge_veth_or_sshd_behind(require_root: None) -> None:
    fleet = up(3, rate_mbit=50, name=own("go"))
    fleet.connection(2).run("setsid sleep 600 </dev/null >/dev/null 2>&1 &")
    stray = netns_pids(fleet.host(2).netns)
    assert len(stray) >= 3  # the host's init, its sshd, and the detached sleep
    assert _traces(fleet)["namespaces"]
    down(fleet.name)
    assert _traces(fleet) == {"namespaces": [], "links": [], "processes": [], "state_dir": False}
    assert not [p for p in stray if is_alive(p)]
    down(fleet.name)  # idempotent


def test_down_cleans_up_after_a_crashed_run_that_lost_its_record(require_root: None) -> None:
    first = up(2, name=own("cr"))
    os.remove(first.state_dir / "fleet.json")
    second = up(2, name=own("cr"))  # up clears the leftovers of the "crashed" first run
    assert not [h.pid for h in first.hosts if is_alive(h.pid)]
    os.remove(second.state_dir / "fleet.json")
    down(own("cr"))
    assert _traces(second) == {"namespaces": [], "links": [], "processes": [], "state_dir": False}


def test_fleet_names_that_do_not_fit_interface_names_are_refused() -> None:
    for bad in ("toolong", "Caps", "9lives", "a-b", ""):
        with pytest.raises(FleetError, match="invalid fleet name"):
            up(1, name=bad)


def test_a_sessions_extra_fleets_are_named_after_its_own() -> None:
    assert [sibling_name(base, "fr") for base in ("hf", "test", "ab123")] == [
        "hffr",
        "tesfr",
        "ab1fr",
    ]
    for bad in ("f", "abc", "F1", "a-"):
        with pytest.raises(FleetError, match="sibling suffix"):
            sibling_name("hf", bad)
