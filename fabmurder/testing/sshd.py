"""Keys, sshd configuration and start-up of the fleet's hosts.

Everything lives under the fleet's state directory in ``/run`` (not under a
world-writable ``/tmp``: sshd's ``StrictModes`` refuses an authorized-keys
file there). Each host has its own host key; one client key, made by the
fleet, logs in as root on every host, and nothing else does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fabmurder.testing import hostinit
from fabmurder.testing.proc import FleetError, run, starttime, wait_until

SSHD = "/usr/sbin/sshd"
#: the SSH user's shell start-up file, replaced on each host by Debian's default
BASHRC = os.path.expanduser("~root/.bashrc")
START_TIMEOUT = 15.0
#: where a host's own (non-root) users keep their keys: under the host's private
#: /srv, so each host has its own, as each server has its users' home directories
USER_KEYS = "/srv/home/%u/.ssh/authorized_keys"

CONFIG = """\
# Written by fabmurder.testing.fleet for host {name}
Port {port}
ListenAddress 0.0.0.0
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys} {user_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 64:30:256
MaxSessions 64
Subsystem sftp internal-sftp
"""


def keygen(path: Path, comment: str) -> None:
    """Create an ed25519 key pair at *path* (mode 600) and ``path.pub``."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)


def public_key(path: Path) -> str:
    """Return the ``type base64`` part of the public key next to private key *path*."""
    fields = path.with_name(path.name + ".pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


def write_config(host_dir: Path, name: str, port: int, authorized_keys: Path) -> Path:
    """Write the sshd_config of one host into *host_dir* and return its path."""
    path = host_dir / "sshd_config"
    path.write_text(
        CONFIG.format(
            name=name,
            port=port,
            host_key=host_dir / "ssh_host_ed25519_key",
            authorized_keys=authorized_keys,
            user_keys=USER_KEYS,
        )
    )
    return path


def sshd_argv(config: Path, log: Path) -> list[str]:
    """Return the foreground sshd command line for *config*, logging to *log*."""
    return [SSHD, "-D", "-f", str(config), "-E", str(log)]


def wait_init(host_dir: Path, generation: int) -> dict[str, Any]:
    """Wait until a host's init reports sshd generation *generation* answering; return it."""
    path = host_dir / "init.json"
    state: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal state
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        if state.get("error"):
            log = (host_dir / "sshd.log").read_text() if (host_dir / "sshd.log").exists() else ""
            raise FleetError(f"host {host_dir.name}: {state['error']}\n{log[-2000:]}")
        return bool(state.get("generation") == generation and state.get("sshd_pid"))

    wait_until(ready, START_TIMEOUT, f"sshd of {host_dir.name}")
    return state


def answers(address: str, port: int) -> bool:
    """Tell whether an SSH server greets us at *address*:*port*."""
    try:
        with socket.create_connection((address, port), timeout=2) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def boot(
    netns: str,
    name: str,
    host_dir: Path,
    config: Path,
    port: int,
    private_dirs: Sequence[str],
    shared: Mapping[str, str] | None = None,
) -> tuple[int, int, int]:
    """Start one host's init (and so its sshd) in *netns*; return its PID, start time, sshd PID.

    The init runs in fresh mount and UTS namespaces, detached from us (``setsid -f``),
    so the host outlives the process that brought it up.
    """
    argv = [
        "setsid", "-f", "ip", "netns", "exec", netns,
        "unshare", "--mount", "--uts", "--propagation", "private", "--",
        sys.executable, "-I", "-S", hostinit.__file__,
        "--state", str(host_dir / "init.json"), "--hostname", name,
        "--port", str(port), "--log", str(host_dir / "sshd.log"),
        *[arg for d in private_dirs for arg in ("--tmpfs", f"{d}:{_mode(d)}")],
        *[arg for path, src in (shared or {}).items() for arg in ("--shared", f"{src}:{path}")],
        "--default-bashrc", BASHRC,
        "--", *sshd_argv(config, host_dir / "sshd.log"),
    ]  # fmt: skip
    # The init outlives this call: it must not hold our pipes open, so it logs to a file.
    with open(host_dir / "init.log", "ab") as log:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True)
    state = wait_init(host_dir, 1)
    pid = int(state["pid"])
    started = starttime(pid)
    if started is None:
        raise FleetError(f"host {name} exited right after starting")
    return pid, started, int(state["sshd_pid"])


def _mode(path: str) -> str:
    return "1777" if path.rstrip("/") == "/tmp" else "0755"
