"""A SIMULATED fleet of 1,000 to 5,000 hosts on this machine's loopback, for the control plane.

This is a simulation, and says so wherever it reports. What is real: the
SSH servers (asyncssh, one listener per host on its own address
``127.B.x.y``, ``B`` from the fleet's name; one ed25519 host key per
host, listed in a real ``known_hosts``; public-key logins, channels, SFTP), fabmurder's control
side unchanged, and on host 1 (tracker and seeder) every command, the
tracker and the libtorrent seeder included. What is simulated: every other
host. Its agent commands are answered in the server's process with the
real commands' JSON, and its peer agent (:mod:`.simagent`) announces and
reports to the real tracker but moves no data.

What it does not show: libtorrent on the peers, any data on the wire, the
peers' CPU and memory, network latency or loss (one machine's loopback),
and the cost of 5,000 real sshd and Python processes. The server runs
in one process per ``workers``, beside the control process on the same
cores.

``up(n)`` returns a :class:`SimFleet` (host 1 is tracker and seeder);
``down()`` ends it. Its settings roots are under :data:`simhost.ROOT`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh
from fabric import Config

from fabmurder.testing.fleet import Fleet
from fabmurder.testing.proc import FleetError, is_alive, wait_until
from fabmurder.testing.simhost import ROOT

#: the simulated hosts' SSH port (off 22: the machine's own sshd may hold it on 0.0.0.0)
PORT = 2222
#: host addresses: 250 per /24, from 127.B.0.2
HOSTS_PER_NET = 250
AGENT = f"{ROOT}/agent"
WHEEL = "fabmurder_sim-0-py3-none-any.whl"
LABEL = "SIMULATED fleet (asyncssh on loopback; peers moved no data, ran no libtorrent)"


def address(index: int, block: int = 77) -> str:
    """Return the loopback address of host ``index`` (1-based) in ``127.<block>.0.0/16``."""
    net, host = divmod(index - 1, HOSTS_PER_NET)
    return f"127.{block}.{net}.{host + 2}"


def block_of(name: str) -> int:
    """Return the second octet of a fleet's addresses: fleets of other names use others."""
    return 64 + zlib.crc32(name.encode()) % 128


@dataclass
class SimFleet:
    """A running simulated fleet: its hosts' strings, keys, and the server processes."""

    name: str
    state_dir: Path
    addresses: list[str]
    key_path: Path
    known_hosts_path: Path
    wheel_dir: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    port: int = PORT
    label: str = LABEL

    def host_string(self, index: int) -> str:
        """Return host ``index``'s (1-based) host string."""
        return f"root@{self.addresses[index - 1]}:{self.port}"

    def host_dir(self, index: int) -> Path:
        """Return where host ``index``'s :data:`ROOT` lives on this machine."""
        return self.state_dir / "hosts" / self.addresses[index - 1] / ROOT.lstrip("/")

    def connect_kwargs(self) -> dict[str, Any]:
        return {"key_filename": [str(self.key_path)], "look_for_keys": False, "allow_agent": False}

    def fabric_config(self, **overrides: Any) -> Config:
        """Return a Fabric config for the fleet, as the real fleet's (its key and known_hosts).

        The connect timeout is longer: thousands of handshakes share two cores.
        """
        # the real fleet's config reads only connect_kwargs() and known_hosts_path
        real = cast(Fleet, self)
        return Fleet.fabric_config(real, **{"timeouts": {"connect": 60}, **overrides})

    def murder(self, peers: int, **extra: Any) -> dict[str, Any]:
        """Return the ``murder`` config of a deploy from host 1 to hosts 2 .. ``peers`` + 1."""
        config: dict[str, Any] = {
            "wheel_dir": str(self.wheel_dir),
            "tracker": self.host_string(1),
            "seeder": self.host_string(1),
            "peers": [self.host_string(i) for i in range(2, peers + 2)],
            "remote_path": AGENT,
            "temp_path": f"{ROOT}/tmp",
            "files_path": f"{ROOT}/build",
            "destination_path": f"{ROOT}/rel",
            "known_hosts": [str(self.known_hosts_path)],
            "strict_host_keys": True,
            "tracker_port": 8997,
            "peer_port": 6882,
        }
        config.update(extra)
        return config

    def down(self) -> None:
        """Stop the servers and the seeder's real daemons; remove the fleet's files."""
        down(self.name)
        for proc in self.procs:
            proc.wait(30)


#: where simulated fleets keep their hosts' files: a tmpfs when the machine has
#: one, as the real fleet's hosts do (5,000 hosts' files on disk left the
#: simulated hosts' servers waiting on the disk)
STATE_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")


def state_dir(name: str) -> Path:
    return STATE_ROOT / f"fabmurder-sim-{name}"


def up(n: int, name: str = "sim", workers: int = 1, release_size: int = 1 << 20) -> SimFleet:
    """Start a simulated fleet of ``n`` hosts (host 1 real: tracker and seeder).

    :param workers: server processes the hosts are spread over.
    :param release_size: bytes of the release made in host 1's ``files_path``.
    """
    if not 2 <= n <= HOSTS_PER_NET * 200:
        raise FleetError(f"a simulated fleet has 2 to {HOSTS_PER_NET * 200} hosts, not {n}")
    down(name)
    state = state_dir(name)
    (state / "hosts").mkdir(parents=True, mode=0o700)
    addresses = [address(i, block_of(name)) for i in range(1, n + 1)]
    client = asyncssh.generate_private_key("ssh-ed25519")
    key_path = state / "id_ed25519"
    client.write_private_key(str(key_path))
    key_path.chmod(0o600)
    keys, known = {}, []
    for addr in addresses:
        key = asyncssh.generate_private_key("ssh-ed25519")
        keys[addr] = key.export_private_key().decode()
        known.append(f"[{addr}]:{PORT} {key.export_public_key().decode().strip()}\n")
    (state / "host_keys.json").write_text(json.dumps(keys))
    known_hosts = state / "known_hosts"
    known_hosts.write_text("".join(known))
    wheels = state / "wheels"
    wheels.mkdir()
    (wheels / WHEEL).write_bytes(b"a simulated wheel set\n")
    stamp = wheel_digest(wheels / WHEEL)
    spec = {
        "addresses": addresses,
        "port": PORT,
        "agent_python": f"{AGENT}/venv/bin/python",
        "authorized_key": client.export_public_key().decode(),
    }
    (state / "simfleet.json").write_text(json.dumps(spec))
    fleet = SimFleet(name, state, addresses, key_path, known_hosts, wheels)
    for i in range(1, n + 1):
        root = fleet.host_dir(i)
        (root / "agent").mkdir(parents=True)
        # the project's venv, as the agent's: the seeder runs it for real
        (root / "agent" / "venv").symlink_to(sys.prefix)
        (root / "agent" / "installed.sha256").write_text(stamp + "\n")
    build = fleet.host_dir(1) / "build"
    build.mkdir()
    (build / "blob.bin").write_bytes(os.urandom(release_size))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for index in range(workers):
        argv = [sys.executable, "-m", "fabmurder.testing.simhost", str(state), str(index)]
        proc = subprocess.Popen(
            [*argv, str(workers)], stdout=subprocess.PIPE, text=True, env=env, cwd=state
        )
        fleet.procs.append(proc)
        (state / f"server-{index}.pid").write_text(str(proc.pid))
    for proc in fleet.procs:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("ready"):
            down(name)
            raise FleetError(f"the simulated fleet's server did not start: {line!r}")
    return fleet


def wheel_digest(*paths: Path) -> str:
    """Return the install stamp of a wheel set, as ``fabmurder.install.wheel_set`` makes it."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def down(name: str = "sim") -> None:
    """End a simulated fleet (idempotent): its servers, host 1's daemons, its files."""
    state = state_dir(name)
    if not state.exists():
        return
    for pid_file in sorted(state.glob("server-*.pid")):
        pid = int(pid_file.read_text() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline")
        if pid and cmdline.exists() and b"simhost" in cmdline.read_bytes():
            os.kill(pid, 15)
            wait_until(lambda: not is_alive(pid), 30, f"simulated fleet server {pid} to end")  # noqa: B023
    temp = state / "hosts" / address(1, block_of(name)) / ROOT.lstrip("/") / "tmp"
    for pid_file in sorted(temp.glob("*.pid")) if temp.exists() else []:
        subprocess.run(
            [sys.executable, "-m", "fabmurder", "daemon", "stop", "--pid-file", str(pid_file)],
            capture_output=True,
            timeout=30,
        )
    shutil.rmtree(state, ignore_errors=True)
