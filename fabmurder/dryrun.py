"""A dry run of a deploy: resolve, probe, read the releases, and say what would run where.

pyinfra's lesson: nothing executes before the plan is complete, so the
plan can be shown instead of run. :func:`dry_run` resolves the settings
and the targeted peers, probes every role host and reads each peer's
releases (read-only commands: ``printf``, ``cat``, ``find``), and returns
a :class:`DryRun` listing, host by host, what a deploy would do. Nothing
is written on any host: no token, no agent, no upload.

Invoke's ``--dry`` makes ``c.run`` print commands instead of running
them, which would blind the probe; the dry run's own connections
therefore run these read-only commands for real and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Unpack

from fabmurder import install, targets
from fabmurder.config import settings
from fabmurder.layout import Layout
from fabmurder.options import Options
from fabmurder.probe import probe
from fabmurder.releases import inspect_hosts
from fabmurder.remote import ConnectionPool


@dataclass(frozen=True)
class Step:
    """One thing a deploy would do on one host."""

    host: str
    action: str


@dataclass(frozen=True)
class DryRun:
    """What a deploy would do: its tag, its peers, and each host's steps."""

    tag: str
    peers: tuple[str, ...]
    steps: tuple[Step, ...] = ()
    #: host -> why it could not be probed (the deploy would fail it, or stop)
    unreachable: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Return the plan as text, one ``[host] action`` line per step."""
        head = f"dry run: release {self.tag} to {len(self.peers)} peer(s); nothing was changed"
        return [head, *(f"[{step.host}] would {step.action}" for step in self.steps)]


def dry_config(c: Any) -> Any:
    """Return a copy of ``c.config`` whose commands really run (Invoke's ``--dry`` off)."""
    config = c.config.clone()
    config.run.dry = False
    config.run.echo = False
    return config


def is_dry(c: Any) -> bool:
    """Tell whether Invoke's ``--dry`` is on for this context."""
    run = c.config.get("run") if hasattr(c.config, "get") else None
    return bool(run and run.get("dry"))


def dry_run(c: Any, *, hosts: Iterable[str] | None = None, **options: Unpack[Options]) -> DryRun:
    """Resolve a deploy to ``hosts`` (default every peer), probe, and return what it would do.

    :raises ConfigError: for settings the deploy would refuse.
    """
    s = settings(c, **options).require("seeder", "files_path", "destination_path", "tracker")
    chosen = targets.subset(s, hosts)
    s = dataclasses.replace(s, peers=tuple(chosen))
    lay = Layout.of(s)
    with ConnectionPool(
        dry_config(c), s.parallel, s.strict_host_keys, s.known_hosts, s.ssh_backend
    ) as pool:
        found = probe(pool, s, s.role_hosts)
        reachable = [h for h in s.peers if h not in found.failures]
        states = inspect_hosts(pool, lay, reachable)
    assert s.seeder
    steps = [Step(h, f"fail: {reason}") for h, reason in found.failures.items()]
    wheels = install.wheel_set(s).digest
    for host in s.role_hosts:
        stamp = found.stamps.get(host)
        if host in found.failures:
            continue
        if stamp != wheels:
            steps.append(Step(host, f"install the agent in {s.remote_path}/venv"))
    source = f"{s.local_path} (uploaded from here)" if s.local_path else s.files_path
    steps.append(Step(s.seeder, f"pack {source} as release {s.tag} and seed it"))
    if not s.tracker_url and s.tracker:
        steps.append(Step(s.tracker, f"start the tracker on port {s.tracker_port} unless it runs"))
    for host, value in states.items():
        if isinstance(value, BaseException):
            steps.append(Step(host, f"fail: cannot read the releases: {states.failed[host]}"))
            continue
        if s.tag in value.releases:
            steps.append(Step(host, f"keep {lay.releases}/{s.tag} (already there)"))
        else:
            steps.append(Step(host, f"download release {s.tag} into {lay.releases}/{s.tag}"))
        was = value.current or value.current_target or "nothing"
        steps.append(Step(host, f"point {lay.current} at releases/{s.tag} (now {was})"))
        after = value.releases + ([s.tag] if s.tag not in value.releases else [])
        doomed = [t for t in after[: max(0, len(after) - s.keep_releases)] if t != s.tag]
        if doomed:
            steps.append(Step(host, f"remove old release(s) {', '.join(doomed)}"))
    return DryRun(s.tag, s.peers, tuple(steps), dict(found.failures))
