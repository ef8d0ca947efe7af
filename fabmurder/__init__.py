"""fabmurder: ship a release to many servers at once over BitTorrent.

The public API is flat and lives here. Control-side names (the tasks, the
function layer, configuration) are imported lazily on first use, because
the same package runs on the hosts as ``python -m fabmurder ...`` where
Fabric is not installed: importing :mod:`fabmurder` must never import
Fabric by itself.
"""

from __future__ import annotations

import importlib

from fabmurder.errors import (
    ArtifactError,
    ConfigError,
    DaemonError,
    DeployError,
    HealthCheckError,
    HookError,
    HostError,
    LockError,
    MurderError,
    TorrentError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# public name -> module that defines it (control side, imported on demand)
_LAZY: dict[str, str] = {
    "ns": "fabmurder.tasks",
    "distribute_files": "fabmurder.pipeline",
    "setup": "fabmurder.pipeline",
    "start_tracker": "fabmurder.pipeline",
    "stop_tracker": "fabmurder.pipeline",
    "create_torrent": "fabmurder.pipeline",
    "start_seeding": "fabmurder.pipeline",
    "stop_seeding": "fabmurder.pipeline",
    "peer_download": "fabmurder.pipeline",
    "stop_peering": "fabmurder.pipeline",
    "stop": "fabmurder.pipeline",
    "clean_temp_files": "fabmurder.pipeline",
    "status": "fabmurder.overview",
    "deploy": "fabmurder.releases",
    "publish": "fabmurder.releases",
    "rollback": "fabmurder.releases",
    "cleanup": "fabmurder.releases",
    "Settings": "fabmurder.config",
    "settings": "fabmurder.config",
    "DEFAULTS": "fabmurder.config",
    "Options": "fabmurder.options",
    "Event": "fabmurder.report",
    "DeployReport": "fabmurder.report",
    "HostReport": "fabmurder.report",
    "murder_defaults": "fabmurder.targets",
    "dry_run": "fabmurder.dryrun",
}

if TYPE_CHECKING:  # pragma: no cover
    from fabmurder.config import DEFAULTS as DEFAULTS
    from fabmurder.config import Settings as Settings
    from fabmurder.config import settings as settings
    from fabmurder.dryrun import dry_run as dry_run
    from fabmurder.options import Options as Options
    from fabmurder.overview import status as status
    from fabmurder.pipeline import clean_temp_files as clean_temp_files
    from fabmurder.pipeline import create_torrent as create_torrent
    from fabmurder.pipeline import distribute_files as distribute_files
    from fabmurder.pipeline import peer_download as peer_download
    from fabmurder.pipeline import setup as setup
    from fabmurder.pipeline import start_seeding as start_seeding
    from fabmurder.pipeline import start_tracker as start_tracker
    from fabmurder.pipeline import stop as stop
    from fabmurder.pipeline import stop_peering as stop_peering
    from fabmurder.pipeline import stop_seeding as stop_seeding
    from fabmurder.pipeline import stop_tracker as stop_tracker
    from fabmurder.releases import cleanup as cleanup
    from fabmurder.releases import deploy as deploy
    from fabmurder.releases import publish as publish
    from fabmurder.releases import rollback as rollback
    from fabmurder.report import DeployReport as DeployReport
    from fabmurder.report import Event as Event
    from fabmurder.report import HostReport as HostReport
    from fabmurder.targets import murder_defaults as murder_defaults
    from fabmurder.tasks import ns as ns

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DaemonError",
    "DeployError",
    "HealthCheckError",
    "HookError",
    "HostError",
    "LockError",
    "MurderError",
    "TorrentError",
    "__version__",
    *_LAZY,
]


def _version() -> str:
    # importlib.metadata costs 35-40 ms of CPU to import and scan: too much for
    # every host-side command (17 of them share 2 cores in the lab), so
    # __version__ is read on first use only.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fabmurder")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fabmurder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
