"""Probing: what the role hosts are, learned in one SSH command per host.

Each host answers with the address its SSH server answered on
(``$SSH_CONNECTION``, so host strings may be ssh_config aliases or sit
behind a gateway), the agent's install stamp (so an up-to-date host needs
no command of its own to check it) and, for the peers, whether
``destination_path/<tag>`` exists and which artifact its marker records.
The answers become a frozen :class:`Probe`, which the plan holds.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fabric import Connection

from fabmurder import contract, install
from fabmurder.config import Settings
from fabmurder.remote import POLL_TIMEOUT, ConnectionPool, quote, shell


@dataclass(frozen=True)
class Probe:
    """What one probe of some hosts found."""

    #: host -> its fleet address, for every host that answered
    addresses: Mapping[str, str] = field(default_factory=dict)
    #: host -> why it could not be probed
    failures: Mapping[str, str] = field(default_factory=dict)
    #: host -> the agent's install stamp (wheel-set digest), "" when none
    stamps: Mapping[str, str] = field(default_factory=dict)
    #: peers where ``destination_path/<tag>`` exists -> the SHA-256 its marker
    #: records, or "" when there is no marker (the tree is not fabmurder's)
    existing: Mapping[str, str] = field(default_factory=dict)

    def merged(self, other: Probe) -> Probe:
        """Return this probe with ``other``'s answers added."""
        return Probe(
            {**self.addresses, **other.addresses},
            {**self.failures, **other.failures},
            {**self.stamps, **other.stamps},
            {**self.existing, **other.existing},
        )


def probe(
    pool: ConnectionPool, s: Settings, hosts: Iterable[str], check_dest: Iterable[str] = ()
) -> Probe:
    """Probe ``hosts`` (those in ``check_dest`` for the release too), all at once."""
    dest = f"{s.destination_path}/{s.tag}" if s.destination_path else None
    check = set(check_dest)
    base = 'printf "addr=%s\\n" "${SSH_CONNECTION:-}"'
    stamp = quote(install.stamp_path(s)) + " 2>/dev/null"
    base += (
        f"; if test -x {quote(s.agent_python)}; then printf 'stamp=%s\\n' \"$(cat {stamp})\"; fi"
    )
    with_dest = base
    if dest:
        marker = quote(f"{s.destination_path}/{contract.marker(s.tag)}")
        with_dest += (
            f"; if test -e {quote(dest)} || test -L {quote(dest)}; then echo exists=1; "
            f'printf "marker=%s\\n" "$(head -c 64 {marker} 2>/dev/null)"; fi'
        )
    names = list(dict.fromkeys(hosts))

    def read(conn: Connection) -> dict[str, str]:
        """Read one host's answers."""
        command = with_dest if pool.host_of(conn) in check else base
        result = shell(conn, command, "probing the host", timeout=POLL_TIMEOUT)
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    answers = pool.fan_out(names, read)
    addresses: dict[str, str] = {}
    stamps: dict[str, str] = {}
    existing: dict[str, str] = {}
    for host, value in answers.succeeded.items():
        fields = value.get("addr", "").split()
        addresses[host] = fields[2] if len(fields) >= 3 else resolve(pool.get(host).host)
        stamps[host] = value.get("stamp", "").strip()
        if value.get("exists") == "1":
            digest = value.get("marker", "").strip().lower()
            existing[host] = digest if len(digest) == 64 else ""
    return Probe(addresses, answers.failed, stamps, existing)


def resolve(hostname: str) -> str:
    """Return an address for ``hostname`` as this machine resolves it (a fallback)."""
    try:
        return str(socket.getaddrinfo(hostname, None)[0][4][0])
    except OSError:
        return hostname
