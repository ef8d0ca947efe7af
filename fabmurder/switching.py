"""Switching releases over a pool the caller holds: read, point ``current``, remove old ones.

These are the steps :mod:`fabmurder.releases` (one call, one pool) and
:mod:`fabmurder.flow` (the staged deploy, one pool for the whole run)
share. Each reads the hosts' release layout (:mod:`fabmurder.layout`
builds the commands), acts, emits one event per host, and raises
:class:`~fabmurder.errors.DeployError` naming every host that failed.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def switch(
    pool: ConnectionPool,
    lay: Layout,
    targets: dict[str, str],
    before: dict[str, HostReleases],
    action: str,
    emit: EventCallback,
) -> dict[str, str | None]:
    """Point ``current`` at ``targets[host]`` on each host; return host -> previous release."""
    author, when = who(), now()

    def one(conn: Connection) -> str | None:
        host = pool.host_of(conn)
        state = before[host]
        previous = state.current or state.current_target
        record = Revision(when, action, targets[host], author, state.current)
        shell(conn, switch_command(lay, targets[host], record), f"switching current ({action})")
        return previous

    result = pool.fan_out(targets, one)
    for host, reason in result.failed.items():
        emit(Event("host", "failed", host, {"ok": False, "reason": reason}))
    for host, value in result.succeeded.items():
        was = f" (was {value})" if value else ""
        emit(Event("host", f"current -> {targets[host]}{was}", host, {"ok": True}))
    if result.failed:
        raise DeployError(f"{action} failed on {len(result.failed)} host(s)", result.failed)
    return result.succeeded


def publish_on(
    pool: ConnectionPool, lay: Layout, tag: str, hosts: Iterable[str], action: str,
    emit: EventCallback,
) -> dict[str, str | None]:  # fmt: skip
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
    pool: ConnectionPool, lay: Layout, count: int, hosts: Iterable[str], emit: EventCallback
) -> dict[str, list[str]]:
    """Remove all but the ``count`` newest releases and the current one on ``hosts``."""
    found = states(pool, lay, hosts)

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
