"""What the function layer tells its caller: progress events and per-host reports.

The pipeline never prints. It calls an ``on_event`` callback with
:class:`Event` objects while it runs, and returns (or attaches to its
:class:`~fabmurder.errors.DeployError`) a :class:`DeployReport` at the end.
The task layer renders both (:mod:`fabmurder.progress`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One thing that happened during a run.

    ``kind`` is one of ``"phase"`` (a step began: ``message`` says which),
    ``"host"`` (a host finished or failed: ``host``, ``data["ok"]``,
    ``data["reason"]``; ``data["quiet"]`` marks routine news a renderer may
    leave out on a large fleet), ``"progress"`` (``data`` holds ``done``,
    ``failed``, ``total``, ``bytes``, ``bytes_total`` and, with fabmurder's
    own tracker, ``swarm``: the tracker's stats of this torrent), or
    ``"warning"``. ``at`` is the wall-clock time it happened, so a caller can
    time each phase of a run.
    """

    kind: str
    message: str = ""
    host: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


EventCallback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """Drop an event: the default callback."""


@dataclass
class HostReport:
    """How one peer fared in a run."""

    host: str
    ok: bool = False
    reason: str | None = None
    state: str = "pending"
    seconds: float | None = None
    bytes: int = 0
    from_seeder: int = 0
    from_peers: int = 0
    hash_failures: int = 0
    #: the agent's own wall-clock times (process start, all pieces verified,
    #: release installed) and CPU seconds, as its last status file said
    started_at: float | None = None
    downloaded_at: float | None = None
    installed_at: float | None = None
    cpu_seconds: float | None = None

    @property
    def finished(self) -> bool:
        """Return True once the host is installed or has failed."""
        return self.ok or self.reason is not None


@dataclass
class DeployReport:
    """The outcome of one run over the peers, host by host: the one thing a run changes.

    Its ``on_event`` callback hears about every change as it happens.
    """

    tag: str
    info_hash: str | None = None
    sha256: str | None = None
    size: int = 0
    seconds: float = 0.0
    hosts: dict[str, HostReport] = field(default_factory=dict)
    on_event: EventCallback = field(default=ignore, repr=False, compare=False)

    def emit(self, event: Event) -> None:
        """Tell the report's callback what happened."""
        self.on_event(event)

    def phase(self, message: str) -> None:
        """Tell the callback a step began."""
        self.on_event(Event("phase", message))

    def fail(self, host: str, reason: str) -> None:
        """Record that ``host`` failed, and say so."""
        self.hosts[host].reason = reason
        self.on_event(Event("host", "failed", host, {"ok": False, "reason": reason}))

    @property
    def failures(self) -> dict[str, str]:
        """Return host -> reason for every host that did not get the release."""
        return {h: r.reason or "unknown" for h, r in self.hosts.items() if not r.ok}

    @property
    def succeeded(self) -> list[str]:
        """Return the hosts that hold the release."""
        return [h for h, r in self.hosts.items() if r.ok]
