"""Releases on the peers: ``releases/<tag>``, a ``current`` symlink, rollback and cleanup.

The layout under ``destination_path`` on every peer is Capistrano's
(``releases/<tag>``, ``current``, ``revisions.log``); :mod:`fabmurder.layout`
names it and builds the shell commands this module runs.

:func:`deploy` is the composite: :func:`distribute` (``distribute_files``
into ``destination_path/releases``), then :func:`publish`, then
:func:`cleanup`. Each stage is a plain function taking a ``Context``, so a
fabfile can call them one by one and put its own steps in between.

:func:`deploy` runs the three stages over one pool of connections (each
peer is connected once for the whole deploy), as the staged run of
:mod:`fabmurder.flow`: a lock, hooks at each stage, linked shared files,
rolling batches with a health check. The switching steps over a pool are in
:mod:`fabmurder.switching`.

Release order: a release's age is when it landed, taken as the earlier of
its first line in ``revisions.log`` and its directory's modification time
(so a release that was never published still has an age, and publishing an
old release again does not make it new). Rollback undoes the latest
release (the one the newest ``revisions.log`` line switched to): each host
on it goes back to the release before it there, the others stay; cleanup keeps the ``keep_releases``
newest and the one ``current`` points to.

``current`` is switched with rename(2): a new symlink is made beside it and
renamed over it (``mv -T``), so readers always find a ``current``. Like the
rest of the function layer, nothing here prints; events go to ``on_event``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Unpack

from fabmurder import distribution, flow
from fabmurder.config import DEFAULTS, Settings, murder_tree, settings
from fabmurder.errors import ConfigError, DeployError
from fabmurder.flow import Deployed, aimed
from fabmurder.hooks import Hooks
from fabmurder.layout import HostReleases, Layout, rollback_targets
from fabmurder.options import Options, UntaggedOptions
from fabmurder.overview import survey
from fabmurder.remote import open_pool
from fabmurder.report import DeployReport, Event, EventCallback, ignore
from fabmurder.switching import cleanup_on, inspect_hosts, previous_of, publish_on, states, switch
from fabmurder.tags import validate_tag
from fabmurder.targets import subset

#: how many releases cleanup keeps when ``murder.keep_releases`` is not set
KEEP_RELEASES: int = DEFAULTS["keep_releases"]

__all__ = ["Deployed", "cleanup", "deploy", "distribute", "publish", "releases", "rollback"]


# -- the function layer ---------------------------------------------------------------------------


def keep_releases(c: Any, value: int | str | None = None) -> int:
    """Return how many releases cleanup keeps: ``value``, else ``murder.keep_releases``, else 5.

    :raises ConfigError: unless it is a whole number of at least 1.
    """
    return settings(c, keep_releases=value).keep_releases


def _resolve(c: Any, options: Options) -> tuple[Settings, Layout]:
    s = settings(c, **options).require("peers", "destination_path")
    return s, Layout.of(s)


def releases(
    c: Any, *, hosts: Iterable[str] | None = None, **options: Unpack[Options]
) -> dict[str, HostReleases | BaseException]:
    """Return each peer's releases (oldest first) and current release, or why it failed."""
    s, lay = _resolve(c, options)
    with open_pool(c, s) as pool:
        return dict(inspect_hosts(pool, lay, subset(s, hosts)))


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

    :param hosts: the peers to switch, a subset of ``murder.peers`` (default: all).
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
        return previous_of(publish_on(pool, lay, tag, subset(s, hosts), action, on_event or ignore))


def rollback(
    c: Any,
    to: str | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **options: Unpack[Options],
) -> dict[str, str | None]:
    """Point ``current`` back at the release before the latest one, or at ``to``, on every peer.

    Without ``to`` it undoes the latest release (see the module docstring):
    after a partial deploy, the hosts that switched go back and the others
    stay. It switches nothing when a host on the latest release has none
    before it, or (with ``to``) when a host lacks ``releases/<to>``.

    :param to: the release to go back to on every host.
    :returns: host -> the release ``current`` pointed to before, for the hosts switched.
    :raises DeployError: naming each host that cannot be moved, and why.
    """
    s, lay = _resolve(c, options)
    emit = on_event or ignore
    with open_pool(c, s) as pool:
        found = states(pool, lay, subset(s, hosts))
        targets, problems, staying = rollback_targets(found, lay, to)
        if problems:
            raise DeployError(
                f"cannot roll back on {len(problems)} host(s); nothing was switched", problems
            )
        for host, why in staying.items():
            emit(Event("host", why, host, {"ok": True}))
        shown = ", ".join(sorted(set(targets.values()))) or "nothing"
        emit(Event("phase", f"rolling back {len(targets)} host(s) to {shown}"))
        return previous_of(switch(pool, lay, targets, found, "rollback", emit)) if targets else {}


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
    removed (never ``destination_path/shared``). Each host's releases are
    read afresh first (the deploy's cleanup takes them from its switch instead).

    :param keep: default ``murder.keep_releases`` (5).
    :returns: host -> the releases removed there.
    :raises DeployError: naming each host where cleanup failed.
    """
    if keep is not None:
        options["keep_releases"] = keep
    s, lay = _resolve(c, options)
    with open_pool(c, s) as pool:
        return cleanup_on(pool, lay, s.keep_releases, subset(s, hosts), on_event or ignore)


def distribute(
    c: Any,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **options: Unpack[Options],
) -> DeployReport:
    """Ship a release into ``destination_path/releases/<tag>`` on every peer (or ``hosts``).

    This is :func:`fabmurder.pipeline.distribute_files` aimed at the
    release layout; it does not touch ``current``.
    """
    s = settings(c, **options).require("destination_path")
    s = aimed(dataclasses.replace(s, peers=tuple(subset(s, hosts))))
    with open_pool(c, s) as pool:
        return distribution.distribute(pool, s, on_event)


def deploy(
    c: Any,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    stage_hooks: Hooks | None = None,
    **options: Unpack[Options],
) -> Deployed:
    """Distribute a release, publish it, and clean up old releases, over one pool.

    The staged run of :func:`fabmurder.flow.run`: the deploy lock, the
    ``stage_hooks`` (and the registered ones) at each stage, linked shared paths, rolling publish.
    :func:`publish` and :func:`cleanup` run on the peers that got the
    release (those that failed, within ``max_failed_peers``, keep their
    ``current``); ``revisions.log`` records the switch as ``deploy``.

    :param hosts: deploy to these peers only (a subset of ``murder.peers``).
    :raises DeployError: from any stage; the stages before it stay done.
    """
    return flow.run(c, hosts=hosts, on_event=on_event, stage_hooks=stage_hooks, **options)


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
        found = inspect_hosts(pool, lay, reachable)
    for host, value in found.items():
        entry = state.setdefault(host, {"roles": ["peer"]})
        if isinstance(value, BaseException):
            entry["layout"] = {"error": found.failed[host]}
        else:
            entry["layout"] = value.as_dict()
    return state
