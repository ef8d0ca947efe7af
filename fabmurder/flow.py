"""The staged deploy: lock, distribute, link shared paths, publish in batches, clean up.

One run of ``murder.deploy``, over one pool of connections, in
Capistrano's stages (see :mod:`fabmurder.hooks`)::

    lock the seeder (fabmurder.lock)
    starting
    distributing  -> distribution.distribute into releases/<tag>
                  -> shared.link (linked_dirs, linked_files)
    distributed
    publishing    -> rolling.publish (batches, health check, revert)
    published
    finishing     -> switching.cleanup_on (on the layouts the switches listed)
    finished
    (failed, on any error; then the error goes on)
    unlock, however the run ended (Ctrl-C included)

Only the peers that received the release are published and cleaned; the
others (within ``max_failed_peers``) keep their ``current``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Unpack

from fabmurder import distribution, lock, rolling, shared
from fabmurder.config import Settings, murder_tree, settings
from fabmurder.errors import MurderError
from fabmurder.hooks import REGISTRY, Hooks, RunContext, from_config
from fabmurder.layout import HostReleases, Layout
from fabmurder.options import Options
from fabmurder.remote import open_pool
from fabmurder.report import DeployReport, EventCallback, ignore
from fabmurder.switching import cleanup_on
from fabmurder.targets import subset


@dataclass
class Deployed:
    """What :func:`run` did: the distribution report, the switch, the cleanup."""

    report: DeployReport
    #: host -> the release ``current`` pointed to before (None: there was none)
    published: dict[str, str | None]
    #: host -> releases removed by cleanup
    removed: dict[str, list[str]]


@dataclass(frozen=True)
class Stages:
    """The deploy-flow keys of the ``murder`` config, resolved once."""

    linked_dirs: tuple[str, ...] = ()
    linked_files: tuple[str, ...] = ()
    batch_size: object = None
    health_check: str | None = None
    hooks: Hooks = dataclasses.field(default_factory=Hooks)

    @classmethod
    def of(cls, c: Any, options: Mapping[str, Any]) -> Stages:
        """Resolve them from ``options`` over ``c.config.murder``.

        :raises ConfigError: for an invalid value.
        """
        tree = {**murder_tree(c), **{k: v for k, v in options.items() if v is not None}}
        size = tree.get("batch_size")
        rolling.batch_count(size, 1)  # checked now, before anything runs
        check = tree.get("health_check")
        return cls(
            shared.linked_paths(tree.get("linked_dirs"), "linked_dirs"),
            shared.linked_paths(tree.get("linked_files"), "linked_files"),
            size,
            str(check) if check not in (None, "") else None,
            from_config(tree.get("hooks")),
        )


def aimed(s: Settings) -> Settings:
    """Return ``s`` with ``destination_path`` aimed at the release layout's ``releases``."""
    return dataclasses.replace(s, destination_path=Layout.of(s).releases)


def run(
    c: Any,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    stage_hooks: Hooks | None = None,
    **options: Unpack[Options],
) -> Deployed:
    """Run the staged deploy (see the module docstring) and return what it did.

    :param hosts: the peers to deploy to, a subset of ``murder.peers`` (default: all).
    :param stage_hooks: hooks of this call, run after the registry's and the config's.
    :raises LockError: when another deploy holds the lock (nothing was done).
    :raises HookError: when a hook failed; the stages before it stay done.
    :raises DeployError: from any stage (``HealthCheckError`` after a revert).
    """
    s = settings(c, **options).require("destination_path", "seeder")
    s = dataclasses.replace(s, peers=tuple(subset(s, hosts)))
    stages = Stages.of(c, options)
    registry = REGISTRY.merged(stages.hooks).merged(stage_hooks or Hooks())
    lay = Layout.of(s)
    emit = on_event or ignore
    ctx = RunContext(c, s.tag, s, s.peers)
    assert s.seeder
    with open_pool(c, s) as pool, lock.held(pool.get(s.seeder), s, force=s.force, emit=emit):
        try:
            registry.run("starting", ctx, emit)
            registry.run("distributing", ctx, emit)
            ctx.report = distribution.distribute(pool, aimed(s), on_event, ctx.set_plan)
            ctx.received = ctx.report.succeeded
            shared.link(pool, lay, s.tag, ctx.received, stages.linked_dirs,
                        stages.linked_files, emit)  # fmt: skip
            registry.run("distributed", ctx, emit)
            if ctx.received:
                registry.run("publishing", ctx, emit)
                # each switch lists the host's releases: the cleanup reads no layout again
                listed: dict[str, HostReleases] = {}
                rolling.publish(
                    pool, lay, s.tag, ctx.received, emit, batch_size=stages.batch_size,
                    health_check=stages.health_check, switched=ctx.switched, listed=listed,
                )  # fmt: skip
                registry.run("published", ctx, emit)
                registry.run("finishing", ctx, emit)
                ctx.removed = cleanup_on(pool, lay, s.keep_releases, ctx.received, emit, listed)
            registry.run("finished", ctx, emit)
        except BaseException as exc:
            ctx.error = exc
            if isinstance(exc, MurderError):
                if ctx.report is None and isinstance(exc.report, DeployReport):
                    ctx.report = exc.report
                exc.report = exc.report or ctx.report
                exc.switched = dict(ctx.switched)
            registry.run("failed", ctx, emit)
            raise
    return Deployed(ctx.report, dict(ctx.switched), ctx.removed)
