"""Keys and sshd configuration of the fleet's hosts.

Everything lives under the fleet's state directory in ``/run`` (not under a
world-writable ``/tmp``: sshd's ``StrictModes`` refuses an authorized-keys
file there). Each host has its own host key; one client key, made by the
fleet, logs in as root on every host, and nothing else does.
"""

from __future__ import annotations

import os
from pathlib import Path

from fabmurder.testing.proc import run

SSHD = "/usr/sbin/sshd"

CONFIG = """\
# Written by fabmurder.testing.fleet for host {name}
Port {port}
ListenAddress 0.0.0.0
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys}
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
        )
    )
    return path


def sshd_argv(config: Path, log: Path) -> list[str]:
    """Return the foreground sshd command line for *config*, logging to *log*."""
    return [SSHD, "-D", "-f", str(config), "-E", str(log)]
