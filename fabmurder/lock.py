"""The deploy lock: one deploy at a time through a seeder (they share its tracker and ports).

A lock is a file, ``temp_path/deploy.lock`` on the seeder, made with the
shell's noclobber (``set -C``: O_EXCL), so of two deploys exactly one
makes it. It records who holds it, from which machine and process, since
when, which tag and which ``destination_path``, and a random token: the
release removes the file only while it still holds that token, so a deploy
never removes a lock another one took after ``--force``.

A lock whose holder ran on this machine and whose process is gone is
*stale*: it is reported as such, and ``force`` clears it. A lock from
another machine cannot be proven stale from here; ``force`` clears it too,
naming it. A lock held by a live process of this machine is never cleared.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fabric import Connection

from fabmurder.config import Settings
from fabmurder.errors import LockError
from fabmurder.layout import now, who
from fabmurder.remote import QUIET, quote, shell
from fabmurder.report import Event, EventCallback

LOCK_FILE = "deploy.lock"
_FIELDS = ("token", "who", "machine", "pid", "since", "tag", "destination")


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the deploy that holds it."""

    token: str
    who: str
    machine: str
    pid: int
    since: str
    tag: str
    destination: str

    def lines(self) -> str:
        return "".join(f"{name}={getattr(self, name)}\n" for name in _FIELDS)

    @classmethod
    def parse(cls, text: str) -> Holder:
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        pid = values.get("pid", "0")
        text_of = {name: values.get(name, "?") for name in _FIELDS if name != "pid"}
        return cls(pid=int(pid) if pid.isdigit() else 0, **text_of)

    @property
    def stale(self) -> bool:
        """Tell whether the holder ran here and its process is gone."""
        if self.machine != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    @property
    def alive_here(self) -> bool:
        """Tell whether the holder is a live process of this machine."""
        return self.machine == socket.gethostname() and self.pid > 0 and not self.stale

    def describe(self) -> str:
        state = "stale: its process is gone" if self.stale else f"pid {self.pid}"
        return (
            f"{self.who} on {self.machine} ({state}) since {self.since}, deploying "
            f"{self.tag} to {self.destination}"
        )


def lock_path(s: Settings) -> str:
    """Return the lock file's path on the seeder."""
    return s.tmp(LOCK_FILE)


def _try(conn: Connection, s: Settings, holder: Holder) -> Holder | None:
    """Make the lock file; return None when made, else who holds it."""
    path, tmp = quote(lock_path(s)), quote(s.temp_path)
    command = (
        f"mkdir -p -m 700 -- {tmp} && "
        f"if (set -C; printf %s {quote(holder.lines())} > {path}) 2>/dev/null; "
        f"then echo made; else cat -- {path}; fi"
    )
    out = shell(conn, command, "taking the deploy lock").stdout
    if out.strip() == "made":
        return None
    return Holder.parse(out)


def release(conn: Connection, s: Settings, token: str) -> None:
    """Remove the lock file if it still holds ``token``."""
    path = quote(lock_path(s))
    conn.run(f"grep -qx {quote('token=' + token)} {path} 2>/dev/null && rm -f -- {path}", **QUIET)


def clear(conn: Connection, s: Settings, other: Holder) -> None:
    """Remove the lock file if it still holds ``other``'s token."""
    release(conn, s, other.token)


@contextmanager
def held(
    conn: Connection, s: Settings, *, force: bool = False, emit: EventCallback | None = None
) -> Iterator[Holder]:
    """Hold the deploy lock on the seeder for the ``with`` block, released however it ends.

    :param force: clear a lock whose holder is not a live process of this machine.
    :raises LockError: when another deploy holds the lock, naming it.
    """
    me = Holder(
        secrets.token_hex(8), who(), socket.gethostname(), os.getpid(), now(), s.tag,
        str(s.destination_path),
    )  # fmt: skip
    other = _try(conn, s, me)
    if other is not None and force and not other.alive_here:
        if emit:
            emit(Event("warning", f"clearing the deploy lock of {other.describe()}", s.seeder))
        clear(conn, s, other)
        other = _try(conn, s, me)
    if other is not None:
        hint = "; --force clears it" if not other.alive_here else ""
        raise LockError(
            f"another deploy holds the lock {lock_path(s)} on {s.seeder}: {other.describe()}{hint}",
            holder=other.describe(),
            stale=other.stale,
        )
    try:
        yield me
    finally:
        release(conn, s, me.token)
