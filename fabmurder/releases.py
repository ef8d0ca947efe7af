"""Releases on the peers: ``releases/<tag>``, a ``current`` symlink, rollback and cleanup.

The layout under ``destination_path`` on every peer is Capistrano's
(``releases/<tag>``, ``current``, ``revisions.log``); :mod:`fabmurder.layout`
names it and builds the shell commands this module runs.

:func:`deploy` is the composite: :func:`distribute` (``distribute_files``
into ``destination_path/releases``), then :func:`publish`, then
:func:`cleanup`. Each stage is a plain function taking a ``Context``, so a
fabfile can call them one by one and put its own steps in between.

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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fabric import Connection

from fabmurder import pipeline
from fabmurder.config import murder_tree, settings
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
from fabmurder.remote import failure_reason
from fabmurder.report import DeployReport, Event, EventCallback
from fabmurder.roles import POLL_TIMEOUT, Run, open_run, shell
from fabmurder.status import status as hosts_status
from fabmurder.tags import validate_tag

#: how many releases cleanup keeps when ``murder.keep_releases`` is not set
KEEP_RELEASES = 5


@dataclass
class Deployed:
    """What :func:`deploy` did: the distribution report, the switch, the cleanup."""

    report: DeployReport
    #: host -> the release ``current`` pointed to before (None: there was none)
    published: dict[str, str | None]
    #: host -> releases removed by cleanup
    removed: dict[str, list[str]]


# -- the function layer ---------------------------------------------------------------------------


def keep_releases(c: Any, value: Any = None) -> int:
    """Return how many releases cleanup keeps: ``value``, else ``murder.keep_releases``, else 5.

    :raises ConfigError: unless it is a whole number of at least 1.
    """
    if value is None:
        value = murder_tree(c).get("keep_releases")
    if value in (None, ""):
        return KEEP_RELEASES
    try:
        keep = int(value)
    except (TypeError, ValueError):
        keep = 0
    if isinstance(value, bool) or keep < 1 or str(keep) != str(value).strip():
        raise ConfigError(
            f"murder.keep_releases must be a whole number of at least 1, not {value!r}",
            key="keep_releases",
        )
    return keep


def _open(c: Any, on_event: EventCallback | None, overrides: dict[str, Any]) -> tuple[Run, Layout]:
    overrides.pop("keep_releases", None)
    run = open_run(c, on_event, **overrides)
    run.s.require("peers", "destination_path")
    return run, Layout.of(run.s)


def _hosts(run: Run, hosts: Iterable[str] | None) -> list[str]:
    return list(run.s.peers) if hosts is None else list(dict.fromkeys(hosts))


def _inspect(run: Run, lay: Layout, hosts: list[str]) -> dict[str, HostReleases | BaseException]:
    command = inspect_command(lay)

    def look(conn: Connection) -> HostReleases:
        host = run.pool.host_of(conn)
        out = shell(conn, command, "reading the releases", timeout=POLL_TIMEOUT)
        return parse_inspect(host, lay, out.stdout)

    return run.pool.by_host(run.pool.fan_out(hosts, look))


def _states(run: Run, lay: Layout, hosts: list[str]) -> dict[str, HostReleases]:
    """Inspect ``hosts``; raise DeployError naming every host that did not answer."""
    found = _inspect(run, lay, hosts)
    failed = {h: failure_reason(v) for h, v in found.items() if isinstance(v, BaseException)}
    if failed:
        raise DeployError(f"cannot read the releases on {len(failed)} host(s)", failed)
    return {h: v for h, v in found.items() if isinstance(v, HostReleases)}


def releases(
    c: Any, *, hosts: Iterable[str] | None = None, **overrides: Any
) -> dict[str, HostReleases | BaseException]:
    """Return each peer's releases (oldest first) and current release, or why it failed."""
    run, lay = _open(c, None, overrides)
    with run.pool:
        return _inspect(run, lay, _hosts(run, hosts))


def _switch(
    run: Run, lay: Layout, targets: dict[str, str], states: dict[str, HostReleases], action: str
) -> dict[str, str | None]:
    """Point ``current`` at ``targets[host]`` on each host; return host -> previous release."""
    author, when = who(), now()

    def switch(conn: Connection) -> str | None:
        host = run.pool.host_of(conn)
        before = states[host]
        previous = before.current or before.current_target
        record = Revision(when, action, targets[host], author, before.current)
        shell(conn, switch_command(lay, targets[host], record), f"switching current ({action})")
        return previous

    result = run.pool.by_host(run.pool.fan_out(targets, switch))
    failed: dict[str, str] = {}
    for host, value in result.items():
        if isinstance(value, BaseException):
            failed[host] = failure_reason(value)
            run.emit(Event("host", "failed", host, {"ok": False, "reason": failed[host]}))
        else:
            was = f" (was {value})" if value else ""
            run.emit(Event("host", f"current -> {targets[host]}{was}", host, {"ok": True}))
    if failed:
        raise DeployError(f"{action} failed on {len(failed)} host(s)", failed)
    return {h: v for h, v in result.items() if not isinstance(v, BaseException)}


def publish(
    c: Any,
    tag: str | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    action: str = "publish",
    **overrides: Any,
) -> dict[str, str | None]:
    """Point ``current`` at ``releases/<tag>`` on every peer, atomically.

    Nothing is switched anywhere unless every host holds the release. The
    old release stays on disk; ``revisions.log`` gets one line per host.

    :param hosts: the peers to switch (default: ``murder.peers``).
    :returns: host -> the release ``current`` pointed to before, or None.
    :raises ConfigError: when no tag is given (flag or ``murder.tag``).
    :raises DeployError: naming each host that lacks the release or failed.
    """
    given = tag or overrides.pop("tag", None) or murder_tree(c).get("tag")
    if not given:
        raise ConfigError("publish needs a release tag: give --tag or set murder.tag", key="tag")
    tag = validate_tag(str(given))
    run, lay = _open(c, on_event, {**overrides, "tag": tag})
    with run.pool:
        return _publish(run, lay, tag, _hosts(run, hosts), action)


def _publish(
    run: Run, lay: Layout, tag: str, hosts: list[str], action: str
) -> dict[str, str | None]:
    states = _states(run, lay, hosts)
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
    run.phase(f"pointing current at {tag} on {len(states)} host(s)")
    return _switch(run, lay, dict.fromkeys(states, tag), states, action)


def rollback(
    c: Any,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **overrides: Any,
) -> dict[str, str | None]:
    """Point ``current`` back at the release before it on every peer.

    "Before" is by release age (see the module docstring). It refuses, and
    switches nothing, when a host has no earlier release or when the hosts
    would not all land on the same release.

    :returns: host -> the release ``current`` pointed to before.
    :raises DeployError: naming each host that cannot roll back.
    """
    run, lay = _open(c, on_event, overrides)
    with run.pool:
        states = _states(run, lay, _hosts(run, hosts))
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
        run.phase(f"rolling back to {next(iter(targets.values()), '?')}")
        return _switch(run, lay, targets, states, "rollback")


def cleanup(
    c: Any,
    keep: int | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **overrides: Any,
) -> dict[str, list[str]]:
    """Remove old releases on every peer, keeping the newest ``keep`` and the current one.

    Only directories directly under ``destination_path/releases`` are ever
    removed.

    :param keep: default ``murder.keep_releases`` (5).
    :returns: host -> the releases removed there.
    :raises DeployError: naming each host where cleanup failed.
    """
    count = keep_releases(c, keep if keep is not None else overrides.get("keep_releases"))
    run, lay = _open(c, on_event, overrides)
    with run.pool:
        return _cleanup(run, lay, count, _hosts(run, hosts))


def _cleanup(run: Run, lay: Layout, count: int, hosts: list[str]) -> dict[str, list[str]]:
    states = _states(run, lay, hosts)

    def remove(conn: Connection) -> list[str]:
        doomed = states[run.pool.host_of(conn)].removable(count)
        if not doomed:
            return []
        out = shell(conn, remove_command(lay, doomed), "removing old releases", timeout=600)
        return [line for line in out.stdout.splitlines() if line.strip()]

    result = run.pool.by_host(run.pool.fan_out(states, remove))
    failed: dict[str, str] = {}
    removed: dict[str, list[str]] = {}
    for host, value in result.items():
        if isinstance(value, BaseException):
            failed[host] = failure_reason(value)
            run.emit(Event("host", "failed", host, {"ok": False, "reason": failed[host]}))
            continue
        removed[host] = value
        message = f"removed {', '.join(value)}" if value else "no old release to remove"
        run.emit(Event("host", message, host, {"ok": True, "removed": value, "quiet": not value}))
    if failed:
        raise DeployError(f"cleanup failed on {len(failed)} host(s)", failed)
    return removed


def distribute(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> DeployReport:
    """Ship a release into ``destination_path/releases/<tag>`` on every peer.

    This is :func:`fabmurder.pipeline.distribute_files` aimed at the
    release layout; it does not touch ``current``.
    """
    overrides.pop("keep_releases", None)
    s = settings(c, **overrides)
    s.require("destination_path")
    lay = Layout.of(s)
    overrides.update(tag=s.tag, destination_path=lay.releases)
    return pipeline.distribute_files(c, on_event=on_event, **overrides)


def deploy(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> Deployed:
    """Distribute a release, publish it, and clean up old releases.

    :func:`publish` and :func:`cleanup` run on the peers that got the
    release (those that failed, within ``max_failed_peers``, keep their
    ``current``); ``revisions.log`` records the switch as ``deploy``.

    :raises DeployError: from any stage; the stages before it stay done.
    """
    keep = keep_releases(c, overrides.pop("keep_releases", None))
    s = settings(c, **overrides)
    s.require("destination_path")
    Layout.of(s)
    overrides["tag"] = s.tag
    report = distribute(c, on_event=on_event, **overrides)
    published: dict[str, str | None] = {}
    removed: dict[str, list[str]] = {}
    if report.succeeded:
        run, lay = _open(c, on_event, overrides)
        with run.pool:
            published = _publish(run, lay, s.tag, report.succeeded, "deploy")
            removed = _cleanup(run, lay, keep, report.succeeded)
    return Deployed(report, published, removed)


def status(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> dict[str, Any]:
    """Return :func:`fabmurder.status.status` with each peer's release layout added.

    A peer's entry gains ``"layout"``: ``{"current", "releases",
    "previous"}`` (releases oldest first) when ``destination_path`` is set.
    """
    overrides.pop("keep_releases", None)
    state = hosts_status(c, on_event=on_event, **overrides)
    run = open_run(c, on_event, **overrides)
    if not run.s.destination_path or not run.s.peers:
        return state
    lay = Layout.of(run.s)
    reachable = [h for h in run.s.peers if "error" not in state.get(h, {})]
    with run.pool:
        found = _inspect(run, lay, reachable)
    for host, value in found.items():
        entry = state.setdefault(host, {"roles": ["peer"]})
        if isinstance(value, BaseException):
            entry["layout"] = {"error": failure_reason(value)}
        else:
            entry["layout"] = value.as_dict()
    return state
