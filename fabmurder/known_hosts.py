"""Known host keys, read once per run and looked up in constant time.

Paramiko reads a ``known_hosts`` file into every client on its own, and its
``HostKeys.load`` checks each new line against every line before it: a
fleet's 1,000-line file cost 0.3-0.4 s per connection, and 2,000 lines about
1.1 s, so that a pool of N connections spent time in N² before a command
ran. :class:`KnownHosts` parses the files once (line by line, with
paramiko's own parser) into a dict by host name; each connection then gets
only its host's keys, and paramiko's own check does the rest (its choice of
key type, and ``BadHostKeyException`` for a changed key).

Hashed entries (``|1|salt|hash``) cannot be indexed: they are matched by
HMAC on a miss, which costs about a microsecond per hashed line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from paramiko import PKey
from paramiko.hostkeys import HostKeyEntry


def key_name(host: str, port: int) -> str:
    """Return the name a host's key is filed under: ``host``, or ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass
class KnownHosts:
    """Host name -> key type -> key, from one or more known_hosts files."""

    by_name: dict[str, dict[str, PKey]] = field(default_factory=dict)
    #: (salt, digest, key) of each hashed entry
    hashed: list[tuple[bytes, bytes, PKey]] = field(default_factory=list)
    lines: int = 0

    @classmethod
    def load(cls, paths: Iterable[str]) -> KnownHosts:
        """Read every existing file of ``paths`` (``~`` expanded); a missing one is skipped."""
        known = cls()
        for path in paths:
            expanded = os.path.expanduser(path)
            if os.path.isfile(expanded):
                with open(expanded, encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        known.add_line(line)
        return known

    def add_line(self, line: str) -> None:
        """Take in one line of a known_hosts file (comments, markers and bad lines are skipped)."""
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            return
        try:
            entry = HostKeyEntry.from_line(line)
        except Exception:  # paramiko raises several types for a line it cannot read
            return
        if entry is None or entry.key is None:
            return
        self.lines += 1
        for name in entry.hostnames:
            if name.startswith("|1|"):
                salt, _, digest = name[3:].partition("|")
                try:
                    self.hashed.append(
                        (base64.b64decode(salt), base64.b64decode(digest), entry.key)
                    )
                except ValueError:
                    continue
            else:
                # the first key of a type wins, as in OpenSSH and paramiko
                self.by_name.setdefault(name, {}).setdefault(entry.key.get_name(), entry.key)

    def find(self, name: str) -> dict[str, PKey]:
        """Return key type -> key for the host name ``name`` (empty if it is unknown)."""
        keys = dict(self.by_name.get(name, {}))
        if self.hashed:
            for salt, digest, key in self.hashed:
                mac = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
                if hmac.compare_digest(mac, digest):
                    keys.setdefault(key.get_name(), key)
        return keys
