"""Stages of a deploy, and the hooks that run at each with the run's context.

``murder.deploy`` runs Capistrano's stages in order::

    starting, distributing, distributed, publishing, published, finishing, finished

and ``failed`` when anything raised. At each stage every hook registered
for it is called with one argument, the run's :class:`RunContext`: the
tag, the settings, the run's plan, the peers targeted, those that received
the release, those switched (host -> the release they had), the report,
and the Invoke context to run commands with.

Register hooks in the fabfile::

    from fabmurder import hooks

    @hooks.on("published")
    def restart(run):
        for host in run.switched:
            ...

or name them in config, ``murder.hooks: {published: ["mypkg.deploy:restart"]}``
(``module:function``, imported when the deploy starts).

A hook that raises stops the deploy at its stage with a :class:`HookError`
naming both. A hook that fails before ``publishing`` leaves ``current``
untouched on every host; one that fails at ``published`` or later leaves
the switched hosts on the new release (``murder.rollback`` undoes it).
Hooks of ``failed`` run after any failure, their own errors reported as
warnings so that they never hide the first one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fabmurder.config import Settings
from fabmurder.errors import ConfigError, HookError
from fabmurder.plan import Plan
from fabmurder.report import DeployReport, Event, EventCallback, ignore

STAGES = (
    "starting",
    "distributing",
    "distributed",
    "publishing",
    "published",
    "finishing",
    "finished",
    "failed",
)


@dataclass
class RunContext:
    """What a hook sees of the run: filled in as the stages pass."""

    c: Any
    tag: str
    settings: Settings
    #: the peers this run targets
    hosts: tuple[str, ...]
    stage: str = "starting"
    #: the peers that hold the release (after ``distributed``)
    received: list[str] = field(default_factory=list)
    #: host -> the release ``current`` pointed to before this run switched it
    switched: dict[str, str | None] = field(default_factory=dict)
    #: host -> releases cleanup removed
    removed: dict[str, list[str]] = field(default_factory=dict)
    report: DeployReport | None = None
    #: the run's frozen plan: hosts' addresses, probe, tracker URLs (from ``distributed`` on)
    plan: Plan | None = None
    #: what stopped the run (for the ``failed`` hooks)
    error: BaseException | None = None

    def set_plan(self, plan: Plan) -> None:
        """Record the run's plan (the distribution calls it once the plan is made)."""
        self.plan = plan


Hook = Callable[[RunContext], Any]


class Hooks:
    """Hooks by stage, in the order they were registered."""

    def __init__(self) -> None:
        self._by_stage: dict[str, list[Hook]] = {stage: [] for stage in STAGES}

    def add(self, stage: str, hook: Hook) -> Hook:
        """Register ``hook`` for ``stage``; return it.

        :raises ConfigError: for a stage that does not exist.
        """
        if stage not in self._by_stage:
            raise ConfigError(f"no deploy stage {stage!r}; the stages are {', '.join(STAGES)}")
        self._by_stage[stage].append(hook)
        return hook

    def on(self, stage: str) -> Callable[[Hook], Hook]:
        """Return a decorator registering a function for ``stage``."""
        return lambda hook: self.add(stage, hook)

    def merged(self, other: Hooks) -> Hooks:
        """Return a registry holding this one's hooks, then ``other``'s."""
        both = Hooks()
        for stage in STAGES:
            both._by_stage[stage] = [*self._by_stage[stage], *other._by_stage[stage]]
        return both

    def run(self, stage: str, run: RunContext, emit: EventCallback = ignore) -> None:
        """Call each hook of ``stage`` with ``run``; the first that raises stops the deploy.

        :raises HookError: naming the stage and the hook.
        """
        run.stage = stage
        for hook in self._by_stage[stage]:
            name = getattr(hook, "__name__", repr(hook))
            emit(Event("phase", f"{stage}: {name}"))
            try:
                hook(run)
            except Exception as exc:
                if stage == "failed":
                    emit(Event("warning", f"the failed hook {name} failed too: {exc}"))
                    continue
                text = str(exc).strip() or type(exc).__name__
                raise HookError(f"the {stage} hook {name} failed: {text}", stage, name) from exc

    def clear(self) -> None:
        """Forget every hook (for tests that register their own)."""
        for hooks in self._by_stage.values():
            hooks.clear()


#: the registry ``murder.deploy`` uses: register with ``@fabmurder.hooks.on(stage)``
REGISTRY = Hooks()
on = REGISTRY.on


def from_config(tree: Mapping[str, Any] | None) -> Hooks:
    """Return the hooks ``murder.hooks`` names (stage -> ``module:function`` list).

    :raises ConfigError: for a stage that does not exist or a name that does not import.
    """
    found = Hooks()
    for stage, names in (tree or {}).items():
        for name in [names] if isinstance(names, str) else list(names or []):
            module, _, attr = str(name).partition(":")
            try:
                hook = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ConfigError(
                    f"murder.hooks.{stage}: cannot import {name!r} (module:function): {exc}",
                    key="hooks",
                ) from None
            found.add(stage, hook)
    return found
