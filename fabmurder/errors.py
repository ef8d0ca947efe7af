"""The one error hierarchy of fabmurder.

Every error the library raises on purpose is a :class:`MurderError`. The
subclasses carry the data a caller needs to report or react (the host, the
command result, the info-hash), so the task layer can turn them into one
clear sentence with :class:`invoke.Exit`.

This module is imported on both sides (control machine and hosts), so it
imports neither Fabric nor Invoke.
"""

from __future__ import annotations

from fabmurder.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class MurderError(Exception):
    """Base class of every error fabmurder raises on purpose.

    A deploy that fails after it began attaches what it did: ``report``
    (its :class:`~fabmurder.report.DeployReport`) and ``switched`` (host ->
    the release ``current`` had, for the hosts it switched).
    """

    report: Any = None
    switched: dict[str, str | None] | None = None


class ConfigError(MurderError):
    """The ``murder`` configuration (or a task flag) is missing or invalid."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class HostError(MurderError):
    """A remote step failed on one host.

    :param host: the host string the step ran on.
    :param result: the Fabric/Invoke ``Result`` or exception behind it, if any.
    """

    def __init__(self, host: str, message: str, result: Any = None) -> None:
        # a reason may quote a host command's stderr, and with it a tracker URL
        message = redact(message)
        super().__init__(f"[{host}] {message}")
        self.host = host
        self.reason = message
        self.result = result


class ArtifactError(MurderError):
    """A release artifact (tarball) is missing, hostile or does not verify."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class TorrentError(MurderError):
    """A torrent file is malformed or does not match what was expected."""

    def __init__(self, message: str, info_hash: str | None = None) -> None:
        super().__init__(message)
        self.info_hash = info_hash


class DaemonError(MurderError):
    """A fabmurder daemon (tracker, seeder, lingering peer) failed to start or stop."""

    def __init__(self, message: str, pid_file: str | None = None) -> None:
        super().__init__(message)
        self.pid_file = pid_file


class DeployError(MurderError):
    """A deploy failed on more peers than ``max_failed_peers`` allows.

    :param failures: mapping of host string to the reason it failed.
    :param report: the full per-host report of the run, if one was made.
    """

    def __init__(self, message: str, failures: dict[str, str], report: Any = None) -> None:
        super().__init__(message)
        self.failures = failures
        self.report = report


class LockError(MurderError):
    """Another deploy holds the deploy lock.

    :param holder: who holds it, from where, since when and for which tag.
    :param stale: True when its holder's process is gone (``--force`` clears it).
    """

    def __init__(self, message: str, holder: str, stale: bool = False) -> None:
        super().__init__(message)
        self.holder = holder
        self.stale = stale


class HookError(MurderError):
    """A hook failed: the deploy stopped at that stage.

    :param stage: the stage whose hook failed (``starting`` ... ``finished``).
    :param hook: the hook's name.
    """

    def __init__(self, message: str, stage: str, hook: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.hook = hook


class HealthCheckError(DeployError):
    """A health check failed during a rolling publish; the switched hosts were reverted.

    :param reverted: host -> the release it was put back on.
    """

    def __init__(
        self, message: str, failures: dict[str, str], reverted: dict[str, str | None]
    ) -> None:
        super().__init__(message, failures)
        self.reverted = reverted
