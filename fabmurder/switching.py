"""Switching releases over a pool the caller holds: read, point ``current``, remove old ones.

These are the steps :mod:`fabmurder.releases` (one call, one pool) and
:mod:`fabmurder.flow` (the staged deploy, one pool for the whole run)
share. Each reads the hosts' release layout (:mod:`fabmurder.layout`
builds the commands), acts, emits one event per host, and raises
:class:`~fabmurder.errors.DeployError` naming every host that failed. A
switch prints the layout it leaves (:class:`Switched`), which the deploy's
cleanup takes instead of reading it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fabric import Connection

from fabmurder.errors import DeployError
from fabmurder.layout import (
    HostReleases,
    Layout,
    Revision,
    inspect_command,
    now,
    parse_inspect,
    remove_command,
    switch_command,
    who,
)
from fabmurder.remote import POLL_TIMEOUT, ConnectionPool, HostResults, shell
from fabmurder.report import Event, EventCallback


def inspect_hosts(
    pool: ConnectionPool, lay: Layout, hosts: Iterable[str]
) -> HostResults[HostReleases]:
    """Read each host's releases and ``current`` (read-only)."""
    command = inspect_command(lay)

    def look(conn: Connection) -> HostReleases:
        out = shell(conn, command, "reading the releases", timeout=POLL_TIMEOUT)
        return parse_inspect(pool.host_of(conn), lay, out.stdout)

    return pool.fan_out(hosts, look)


def states(pool: ConnectionPool, lay: Layout, hosts: Iterable[str]) -> dict[str, HostReleases]:
    """Inspect ``hosts``; raise DeployError naming every host that did not answer."""
    found = inspect_hosts(pool, lay, hosts)
    if found.failed:
        raise DeployError(f"cannot read the releases on {len(found.failed)} host(s)", found.failed)
    return found.succeeded


@dataclass(frozen=True)
class Switched:
    """One host's switch: what ``current`` pointed to before, and the layout it left."""

    #: the release (or, when not one, the path) ``current`` pointed to; None: nothing
    previous: str | None
    #: the host's releases and ``current`` as the switch command listed them just after
    after: HostReleases


def previous_of(switched: Mapping[str, Switched]) -> dict[str, str | None]:
    """Return host -> the release ``current`` pointed to before each switch."""
    return {host: value.previous for host, value in switched.items()}


def switch(
    pool: ConnectionPool,
    lay: Layout,
    targets: dict[str, str],
    before: dict[str, HostReleases],
    action: str,
    emit: EventCallback,
) -> dict[str, Switched]:
    """Point ``current`` at ``targets[host]`` on each host; return what each switch did."""
    author, when = who(), now()

    def one(conn: Connection) -> Switched:
        host = pool.host_of(conn)
        state = before[host]
        previous = state.current or state.current_target
        record = Revision(when, action, targets[host], author, state.current)
        command = switch_command(lay, targets[host], record)
        out = shell(conn, command, f"switching current ({action})")
        return Switched(previous, parse_inspect(host, lay, out.stdout))

    result = pool.fan_out(targets, one)
    for host, reason in result.failed.items():
        emit(Event("host", "failed", host, {"ok": False, "reason": reason}))
    for host, value in result.succeeded.items():
        was = f" (was {value.previous})" if value.previous else ""
        emit(Event("host", f"current -> {targets[host]}{was}", host, {"ok": True}))
    if result.failed:
        raise DeployError(f"{action} failed on {len(result.failed)} host(s)", result.failed)
    return result.succeeded


def publish_on(
    pool: ConnectionPool, lay: Layout, tag: str, hosts: Iterable[str], action: str,
    emit: EventCallback,
) -> dict[str, Switched]:  # fmt: skip
    """Point ``current`` at ``tag`` on ``hosts``, or nowhere unless every host holds it."""
    found = states(pool, lay, hosts)
    missing = {
        h: f"release {tag!r} is not in {lay.releases}"
        for h, state in found.items()
        if tag not in state.releases
    }
    if missing:
        raise DeployError(
            f"release {tag!r} is missing on {len(missing)} host(s); nothing was switched",
            missing,
        )
    emit(Event("phase", f"pointing current at {tag} on {len(found)} host(s)"))
    return switch(pool, lay, dict.fromkeys(found, tag), found, action, emit)


def cleanup_on(
    pool: ConnectionPool,
    lay: Layout,
    count: int,
    hosts: Iterable[str],
    emit: EventCallback,
    listed: Mapping[str, HostReleases] | None = None,
) -> dict[str, list[str]]:
    """Remove all but the ``count`` newest releases and the current one on ``hosts``.

    :param listed: host -> its layout as already known (the deploy passes
        what each switch listed, :attr:`Switched.after`); only the hosts
        missing from it are read. A listing taken at the switch is safe to
        act on later: the removal command itself skips whatever ``current``
        points to at the moment it runs (:func:`~fabmurder.layout.remove_command`),
        so a ``current`` moved since (by a hook, say) is never removed; a
        release that landed since is not in the listing, so it is kept; one
        removed since is skipped.
    """
    names = list(dict.fromkeys(hosts))
    given = listed or {}
    unread = [h for h in names if h not in given]
    read = states(pool, lay, unread) if unread else {}
    found = {h: given[h] if h in given else read[h] for h in names}

    def remove(conn: Connection) -> list[str]:
        doomed = found[pool.host_of(conn)].removable(count)
        if not doomed:
            return []
        out = shell(conn, remove_command(lay, doomed), "removing old releases", timeout=600)
        return [line for line in out.stdout.splitlines() if line.strip()]

    result = pool.fan_out(found, remove)
    for host, reason in result.failed.items():
        emit(Event("host", "failed", host, {"ok": False, "reason": reason}))
    for host, value in result.succeeded.items():
        message = f"removed {', '.join(value)}" if value else "no old release to remove"
        emit(Event("host", message, host, {"ok": True, "removed": value, "quiet": not value}))
    if result.failed:
        raise DeployError(f"cleanup failed on {len(result.failed)} host(s)", result.failed)
    return result.succeeded
