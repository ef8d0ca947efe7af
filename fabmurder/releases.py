"""Releases on the peers: ``releases/<tag>``, a ``current`` symlink, rollback and cleanup.

The layout under ``destination_path`` on every peer is Capistrano's
(``releases/<tag>``, ``current``, ``revisions.log``); :mod:`fabmurder.layout`
names it and builds the shell commands this module runs.

:func:`deploy` is the composite: :func:`distribute` (``distribute_files``
into ``destination_path/releases``), then :func:`publish`, then
:func:`cleanup`. Each stage is a plain function taking a ``Context``, so a
fabfile can call them one by one and put its own steps in between.

:func:`deploy` runs the three stages over one pool of connections: each
peer is connected once for the whole deploy.

Release order: a release's age is when it landed, taken as the earlier of
its first line in ``revisions.log`` and its directory's modification time
(so a release that was never published still has an age, and publishing an
old release again does not make it new). Rollback goes to the newest
release older than the current one; cleanup keeps the ``keep_releases``
newest and the one ``current`` points to.

``current`` is switched with rename(2): a new symlink is made beside it and
renamed over it (``mv -T``), so readers always find a ``current``. Like the
rest of the function layer, nothing here prints; events go to ``on_event``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Unpack

from fabric import Connection

from fabmurder import distribution
from fabmurder.config import DEFAULTS, Settings, murder_tree, settings
from fabmurder.errors import ConfigError, DeployError
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
from fabmurder.options import Options, UntaggedOptions
from fabmurder.overview import survey
from fabmurder.remote import POLL_TIMEOUT, ConnectionPool, HostResults, open_pool, shell
from fabmurder.report import DeployReport, Event, EventCallback, ignore
from fabmurder.tags import validate_tag

#: how many releases cleanup keeps when ``murder.keep_releases`` is not set
KEEP_RELEASES: int = DEFAULTS["keep_releases"]


@dataclass
class Deployed:
    """What :func:`deploy` did: the distribution report, the switch, the cleanup."""

    report: DeployReport
    #: host -> the release ``current`` pointed to before (None: there was none)
    published: dict[str, str | None]
    #: host -> releases removed by cleanup
    removed: dict[str, list[str]]


# -- the function layer ---------------------------------------------------------------------------


def keep_releases(c: Any, value: int | str | None = None) -> int:
    """Return how many releases cleanup keeps: ``value``, else ``murder.keep_releases``, else 5.

    :raises ConfigError: unless it is a whole number of at least 1.
    """
    return settings(c, keep_releases=value).keep_releases


def _resolve(c: Any, options: Options) -> tuple[Settings, Layout]:
    s = settings(c, **options).require("peers", "destination_path")
    return s, Layout.of(s)


def _hosts(s: Settings, hosts: Iterable[str] | None) -> list[str]:
    return list(s.peers) if hosts is None else list(dict.fromkeys(hosts))


def _inspect(pool: ConnectionPool, lay: Layout, hosts: list[str]) -> HostResults[HostReleases]:
    command = inspect_command(lay)

    def look(conn: Connection) -> HostReleases:
        out = shell(conn, command, "reading the releases", timeout=POLL_TIMEOUT)
        return parse_inspect(pool.host_of(conn), lay, out.stdout)

    return pool.fan_out(hosts, look)


def _states(pool: ConnectionPool, lay: Layout, hosts: list[str]) -> dict[str, HostReleases]:
    """Inspect ``hosts``; raise DeployError naming every host that did not answer."""
    found = _inspect(pool, lay, hosts)
    if found.failed:
        raise DeployError(f"cannot read the releases on {len(found.failed)} host(s)", found.failed)
    return found.succeeded


def releases(
    c: Any, *, hosts: Iterable[str] | None = None, **options: Unpack[Options]
) -> dict[str, HostReleases | BaseException]:
    """Return each peer's releases (oldest first) and current release, or why it failed."""
    s, lay = _resolve(c, options)
    with open_pool(c, s) as pool:
        return dict(_inspect(pool, lay, _hosts(s, hosts)))


def _switch(
    pool: ConnectionPool,
    lay: Layout,
    targets: dict[str, str],
    states: dict[str, HostReleases],
    action: str,
    emit: EventCallback,
) -> dict[str, str | None]:
    """Point ``current`` at ``targets[host]`` on each host; return host -> previous release."""
    author, when = who(), now()

    def switch(conn: Connection) -> str | None:
        host = pool.host_of(conn)
        before = states[host]
        previous = before.current or before.current_target
        record = Revision(when, action, targets[host], author, before.current)
        shell(conn, switch_command(lay, targets[host], record), f"switching current ({action})")
        return previous

    result = pool.fan_out(targets, switch)
    for host, reason in result.failed.items():
        emit(Event("host", "failed", host, {"ok": False, "reason": reason}))
    for host, value in result.succeeded.items():
        was = f" (was {value})" if value else ""
        emit(Event("host", f"current -> {targets[host]}{was}", host, {"ok": True}))
    if result.failed:
        raise DeployError(f"{action} failed on {len(result.failed)} host(s)", result.failed)
    return result.succeeded


def publish(
    c: Any,
    tag: str | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    action: str = "publish",
    **options: Unpack[UntaggedOptions],
) -> dict[str, str | None]:
    """Point ``current`` at ``releases/<tag>`` on every peer, atomically.

    Nothing is switched anywhere unless every host holds the release. The
    old release stays on disk; ``revisions.log`` gets one line per host.

    :param hosts: the peers to switch (default: ``murder.peers``).
    :returns: host -> the release ``current`` pointed to before, or None.
    :raises ConfigError: when no tag is given (flag or ``murder.tag``).
    :raises DeployError: naming each host that lacks the release or failed.
    """
    given = tag or murder_tree(c).get("tag")
    if not given:
        raise ConfigError("publish needs a release tag: give --tag or set murder.tag", key="tag")
    tag = validate_tag(str(given))
    s = settings(c, tag=tag, **options).require("peers", "destination_path")
    lay = Layout.of(s)
    with open_pool(c, s) as pool:
        return _publish(pool, lay, tag, _hosts(s, hosts), action, on_event or ignore)


def _publish(
    pool: ConnectionPool, lay: Layout, tag: str, hosts: list[str], action: str, emit: EventCallback
) -> dict[str, str | None]:
    states = _states(pool, lay, hosts)
    missing = {
        h: f"release {tag!r} is not in {lay.releases}"
        for h, state in states.items()
        if tag not in state.releases
    }
    if missing:
        raise DeployError(
            f"release {tag!r} is missing on {len(missing)} host(s); nothing was switched",
            missing,
        )
    emit(Event("phase", f"pointing current at {tag} on {len(states)} host(s)"))
    return _switch(pool, lay, dict.fromkeys(states, tag), states, action, emit)


def rollback(
    c: Any,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **options: Unpack[Options],
) -> dict[str, str | None]:
    """Point ``current`` back at the release before it on every peer.

    "Before" is by release age (see the module docstring). It refuses, and
    switches nothing, when a host has no earlier release or when the hosts
    would not all land on the same release.

    :returns: host -> the release ``current`` pointed to before.
    :raises DeployError: naming each host that cannot roll back.
    """
    s, lay = _resolve(c, options)
    emit = on_event or ignore
    with open_pool(c, s) as pool:
        states = _states(pool, lay, _hosts(s, hosts))
        problems: dict[str, str] = {}
        targets: dict[str, str] = {}
        for host, state in states.items():
            previous = state.previous()
            if state.current is None:
                shown = state.current_target or "nothing"
                problems[host] = f"current points to {shown}, not a release in {lay.releases}"
            elif previous is None:
                problems[host] = f"no release before {state.current!r} to roll back to"
            else:
                targets[host] = previous
        if problems:
            raise DeployError(f"cannot roll back on {len(problems)} host(s)", problems)
        if len(set(targets.values())) > 1:
            raise DeployError(
                "the hosts would roll back to different releases; choose one with publish --tag",
                {h: f"would roll back to {t!r}" for h, t in targets.items()},
            )
        emit(Event("phase", f"rolling back to {next(iter(targets.values()), '?')}"))
        return _switch(pool, lay, targets, states, "rollback", emit)


def cleanup(
    c: Any,
    keep: int | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **options: Unpack[Options],
) -> dict[str, list[str]]:
    """Remove old releases on every peer, keeping the newest ``keep`` and the current one.

    Only directories directly under ``destination_path/releases`` are ever
    removed.

    :param keep: default ``murder.keep_releases`` (5).
    :returns: host -> the releases removed there.
    :raises DeployError: naming each host where cleanup failed.
    """
    if keep is not None:
        options["keep_releases"] = keep
    s, lay = _resolve(c, options)
    with open_pool(c, s) as pool:
        return _cleanup(pool, lay, s.keep_releases, _hosts(s, hosts), on_event or ignore)


def _cleanup(
    pool: ConnectionPool, lay: Layout, count: int, hosts: list[str], emit: EventCallback
) -> dict[str, list[str]]:
    states = _states(pool, lay, hosts)

    def remove(conn: Connection) -> list[str]:
        doomed = states[pool.host_of(conn)].removable(count)
        if not doomed:
            return []
        out = shell(conn, remove_command(lay, doomed), "removing old releases", timeout=600)
        return [line for line in out.stdout.splitlines() if line.strip()]

    result = pool.fan_out(states, remove)
    for host, reason in result.failed.items():
        emit(Event("host", "failed", host, {"ok": False, "reason": reason}))
    for host, value in result.succeeded.items():
        message = f"removed {', '.join(value)}" if value else "no old release to remove"
        emit(Event("host", message, host, {"ok": True, "removed": value, "quiet": not value}))
    if result.failed:
        raise DeployError(f"cleanup failed on {len(result.failed)} host(s)", result.failed)
    return result.succeeded


def _aimed(s: Settings) -> Settings:
    """Return ``s`` with ``destination_path`` aimed at the release layout's ``releases``."""
    return dataclasses.replace(s, destination_path=Layout.of(s).releases)


def distribute(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> DeployReport:
    """Ship a release into ``destination_path/releases/<tag>`` on every peer.

    This is :func:`fabmurder.pipeline.distribute_files` aimed at the
    release layout; it does not touch ``current``.
    """
    s = _aimed(settings(c, **options).require("destination_path"))
    with open_pool(c, s) as pool:
        return distribution.distribute(pool, s, on_event)


def deploy(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> Deployed:
    """Distribute a release, publish it, and clean up old releases, over one pool.

    :func:`publish` and :func:`cleanup` run on the peers that got the
    release (those that failed, within ``max_failed_peers``, keep their
    ``current``); ``revisions.log`` records the switch as ``deploy``.

    :raises DeployError: from any stage; the stages before it stay done.
    """
    s = settings(c, **options).require("destination_path")
    lay = Layout.of(s)
    emit = on_event or ignore
    published: dict[str, str | None] = {}
    removed: dict[str, list[str]] = {}
    with open_pool(c, s) as pool:
        report = distribution.distribute(pool, _aimed(s), on_event)
        if report.succeeded:
            published = _publish(pool, lay, s.tag, report.succeeded, "deploy", emit)
            removed = _cleanup(pool, lay, s.keep_releases, report.succeeded, emit)
    return Deployed(report, published, removed)


def status(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> dict[str, dict[str, object]]:
    """Return :func:`fabmurder.overview.status` with each peer's release layout added.

    A peer's entry gains ``"layout"``: ``{"current", "releases",
    "previous"}`` (releases oldest first) when ``destination_path`` is set.
    """
    s = settings(c, **options)
    with open_pool(c, s) as pool:
        state = survey(pool, s)
        if not s.destination_path or not s.peers:
            return state
        lay = Layout.of(s)
        reachable = [h for h in s.peers if "error" not in state.get(h, {})]
        found = _inspect(pool, lay, reachable)
    for host, value in found.items():
        entry = state.setdefault(host, {"roles": ["peer"]})
        if isinstance(value, BaseException):
            entry["layout"] = {"error": found.failed[host]}
        else:
            entry["layout"] = value.as_dict()
    return state
