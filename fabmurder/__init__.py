"""fabmurder: ship a release to many servers at once over BitTorrent.

The public API is flat and lives here. Control-side names (the tasks, the
function layer, configuration) are imported lazily on first use, because
the same package runs on the hosts as ``python -m fabmurder ...`` where
Fabric is not installed: importing :mod:`fabmurder` must never import
Fabric by itself.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from fabmurder.errors import (
    ArtifactError,
    ConfigError,
    DaemonError,
    DeployError,
    HostError,
    MurderError,
    TorrentError,
)

try:
    __version__ = version("fabmurder")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# public name -> module that defines it (control side, imported on demand)
_LAZY: dict[str, str] = {
    "ns": "fabmurder.tasks",
}

if TYPE_CHECKING:  # pragma: no cover
    from fabmurder.tasks import ns as ns

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DaemonError",
    "DeployError",
    "HostError",
    "MurderError",
    "TorrentError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fabmurder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
