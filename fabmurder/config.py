"""The ``murder`` configuration subtree: defaults, resolution and validation.

Every key fabmurder reads is declared in :data:`DEFAULTS` (even those whose
default is ``None``), because Invoke only lets ``FABRIC_MURDER_*``
environment variables and runtime files override keys that already exist.
:func:`settings` merges task flags over the config and checks the result
once, so the pipeline can trust a :class:`Settings` without re-checking.

Keys (all under ``murder``):

``tracker``, ``seeder``, ``peers``
    host strings (``user@host:port``) of the three roles; ``peers`` is a list
    or a comma/space separated string (the form an environment variable has).
``tracker_port`` (8998), ``peer_port`` (6881), ``setup_port`` (8999)
    listen ports on the hosts.
``tracker_url``
    an external tracker's announce URL; when set, no tracker is started.
``tracker_register``
    with an external tracker: a shell command run on the ``tracker`` host to
    register each torrent, ``{info_hash}`` replaced by its hex info-hash
    (e.g. append it to opentracker's whitelist and send it SIGHUP).
``tracker_token``
    secret path element of the announce URL; when unset, one is made per
    tracker and kept in ``temp_path/tracker.token`` on the tracker host.
``remote_path`` (``/opt/fabmurder``), ``temp_path`` (``~/.cache/fabmurder/tmp``)
    where the agent venv lives, and where torrents, tarballs, PID files and
    logs go, on every host. ``temp_path`` is the deploy user's own: a leading
    ``~/`` is that user's home on each host (expanded by the remote shell),
    the hosts create it mode 0700 and refuse one another user could write;
    a directory every user shares (``/tmp``, ``/var/tmp``, ``/dev/shm``,
    ``/home``, ...) is refused here, before anything runs.
``files_path``, ``local_path``, ``destination_path``, ``tag``
    what to ship (on the seeder, or on the control machine), where it lands
    on the peers (``destination_path/<tag>``), and the release name
    (default: a UTC timestamp).
``timeout`` (600), ``seed_after`` (30), ``max_failed_peers`` (0)
    seconds a peer may take; seconds a finished peer keeps seeding; how many
    peers may fail before the run does.
``upload_rate_limit``, ``download_rate_limit``
    bytes per second per host, 0 for no limit.
``parallel`` (32)
    maximum number of SSH operations in flight at once.
``python`` (``python3``), ``wheel_dir``
    the hosts' interpreter for the agent venv; a directory of wheels to ship
    instead of the ones fabmurder builds.
``force`` (False)
    replace a release that already exists at ``destination_path/<tag>``.
``layout`` (``tarball``)
    how a release travels: ``tarball`` (one tar file) or ``tree`` (file by
    file, filled on each peer from its older tree releases; see
    ``docs/delta.md``).
``piece_size``, ``libtorrent``
    torrent piece size in bytes (default: chosen by ``create`` from the
    release's size and the number of peers); libtorrent
    setting overrides passed to the agents.
``poll_interval`` (1.0)
    longest gap between two progress polls of a peer (polls come sooner
    right after the start and when a peer's download should be done).
``strict_host_keys`` (True), ``known_hosts``
    refuse a host whose SSH key is unknown or changed, checked against
    ``known_hosts`` (a path or list; default the SSH config's
    ``UserKnownHostsFile`` or ``~/.ssh/known_hosts``, plus
    ``/etc/ssh/ssh_known_hosts``). False accepts any key, as Fabric does.
``ssh_backend`` (``fabric``)
    how the control host speaks SSH: ``fabric`` (Fabric's Paramiko
    connections, a thread each) or ``asyncssh`` (:mod:`fabmurder.async_ssh`:
    one event loop thread for every connection; needs ``fabmurder[asyncssh]``
    and refuses gateways, agent forwarding and sudo).
``keep_releases`` (5)
    how many releases ``murder.cleanup`` (and ``murder.deploy``) keeps under
    ``destination_path/releases``, besides the current one (read and checked
    as :attr:`Settings.keep_releases`, a whole number of at least 1).
``report``, ``hooks``, ``linked_dirs``, ``linked_files``, ``batch_size``, ``health_check``
    the deploy flow's keys, resolved by :mod:`fabmurder.flow` (see ``docs/config.md``).
"""

from __future__ import annotations

import difflib
import importlib.util
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Unpack

from fabmurder.config_values import (
    boolean,
    check_roles,
    host_list,
    number,
    refuse_shared_temp,
    split_host,
)
from fabmurder.errors import ConfigError
from fabmurder.options import Options
from fabmurder.tags import default_tag, validate_tag

#: Every key of the ``murder`` subtree with its default.
DEFAULTS: dict[str, Any] = {
    "tracker": None,
    "seeder": None,
    "peers": None,
    "tracker_port": 8998,
    "peer_port": 6881,
    "setup_port": 8999,
    "tracker_url": None,
    "tracker_token": None,
    "tracker_register": None,
    "remote_path": "/opt/fabmurder",
    "temp_path": "~/.cache/fabmurder/tmp",
    "files_path": None,
    "local_path": None,
    "destination_path": None,
    "tag": None,
    "timeout": 600,
    "seed_after": 30,
    "max_failed_peers": 0,
    "upload_rate_limit": 0,
    "download_rate_limit": 0,
    "parallel": 32,
    "python": "python3",
    "wheel_dir": None,
    "force": False,
    "layout": "tarball",
    "piece_size": None,
    "libtorrent": {},
    "poll_interval": 1.0,
    "strict_host_keys": True,
    "known_hosts": None,
    "ssh_backend": "fabric",
    "keep_releases": 5,
    # the deploy flow (fabmurder.flow): read by its own modules, not by Settings
    "report": None,
    "hooks": {},
    "linked_dirs": [],
    "linked_files": [],
    "batch_size": None,
    "health_check": None,
}

_INT_KEYS = (
    "tracker_port",
    "peer_port",
    "setup_port",
    "max_failed_peers",
    "upload_rate_limit",
    "download_rate_limit",
    "parallel",
)
_FLOAT_KEYS = ("timeout", "seed_after", "poll_interval")
#: the values of ``murder.layout``: one tarball, or the tree file by file (docs/delta.md)
LAYOUTS = ("tarball", "tree")
#: the values of ``murder.ssh_backend``: Fabric's connections, or fabmurder.async_ssh's
SSH_BACKENDS = ("fabric", "asyncssh")
_PATH_KEYS = ("remote_path", "temp_path", "files_path", "destination_path")


class ConfigWarning(UserWarning):
    """A ``murder`` config key fabmurder does not know (most likely a typo)."""


@dataclass(frozen=True)
class Settings:
    """The resolved ``murder`` settings of one run (see the module docstring)."""

    tracker: str | None
    seeder: str | None
    peers: tuple[str, ...]
    tracker_port: int
    peer_port: int
    setup_port: int
    tracker_url: str | None
    tracker_token: str | None
    tracker_register: str | None
    remote_path: str
    temp_path: str
    files_path: str | None
    local_path: str | None
    destination_path: str | None
    tag: str
    timeout: float
    seed_after: float
    max_failed_peers: int
    upload_rate_limit: int
    download_rate_limit: int
    parallel: int
    python: str
    wheel_dir: str | None
    force: bool
    piece_size: int | None
    libtorrent: Mapping[str, Any] = field(default_factory=dict)
    poll_interval: float = 1.0
    strict_host_keys: bool = True
    known_hosts: tuple[str, ...] = ()
    keep_releases: int = 5
    layout: str = "tarball"
    ssh_backend: str = "fabric"

    @property
    def agent_python(self) -> str:
        """Return the agent venv's interpreter on the hosts."""
        return f"{self.remote_path}/venv/bin/python"

    def tmp(self, name: str) -> str:
        """Return the path of ``name`` under ``temp_path`` on a host."""
        return f"{self.temp_path}/{name}"

    @property
    def role_hosts(self) -> tuple[str, ...]:
        """Return every distinct host of the three roles, tracker first."""
        hosts: list[str] = []
        own_tracker = None if self.tracker_url else self.tracker
        for host in (own_tracker, self.seeder, *self.peers):
            if host and host not in hosts:
                hosts.append(host)
        return tuple(hosts)

    def require(self, *keys: str) -> Settings:
        """Return self if every key in ``keys`` is set, else raise.

        ``"tracker"`` is satisfied by ``tracker_url`` as well, and
        ``"files_path"`` by ``local_path``.

        :raises ConfigError: naming the first missing key.
        """
        for key in keys:
            value = getattr(self, key)
            if key == "tracker" and self.tracker_url:
                continue
            if key == "files_path" and self.local_path:
                continue
            if value in (None, "", ()):
                hint = {
                    "tracker": " (or murder.tracker_url for an external tracker)",
                    "files_path": " (or murder.local_path to upload a local build)",
                }.get(key, "")
                raise ConfigError(
                    f"murder.{key} is not set{hint}; set it in your Fabric config, "
                    f"a FABRIC_MURDER_{key.upper()} environment variable or a task flag",
                    key=key,
                )
        return self


def warn_unknown_keys(tree: Mapping[str, Any]) -> list[str]:
    """Warn about each key of ``tree`` that fabmurder does not know; return them."""
    unknown = sorted(key for key in tree if key not in DEFAULTS)
    for key in unknown:
        close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
        hint = f"; did you mean murder.{close[0]}?" if close else ""
        warnings.warn(f"unknown config key murder.{key}{hint}", ConfigWarning, stacklevel=3)
    return unknown


def murder_tree(c: Any) -> dict[str, Any]:
    """Return the ``murder`` subtree of a context's config as a plain dict."""
    tree = c.config.get("murder") if hasattr(c.config, "get") else None
    if tree is None:
        return {}
    return {key: tree[key] for key in tree}


def settings(c: Any, **overrides: Unpack[Options]) -> Settings:
    """Resolve the run's settings: flags in ``overrides`` over ``c.config.murder``.

    An override of ``None`` means "not given" and falls back to the config,
    so task keyword arguments can default to ``None``.

    :raises ConfigError: for an invalid tag, a non-numeric value, the same
        host named twice, or the seeder also named as a peer.
    """
    tree = murder_tree(c)
    warn_unknown_keys(tree)
    for key in overrides:
        if key not in DEFAULTS:
            raise ConfigError(f"unknown setting {key!r}", key=key)
    merged: dict[str, Any] = dict(DEFAULTS)
    merged.update({k: v for k, v in tree.items() if k in DEFAULTS})
    merged.update({k: v for k, v in overrides.items() if v is not None})

    values: dict[str, Any] = {}
    for key in _INT_KEYS:
        values[key] = number(merged[key], key, int)
    for key in _FLOAT_KEYS:
        values[key] = number(merged[key], key, float)
    for key in ("tracker_port", "peer_port", "setup_port"):
        if not 0 < values[key] < 65536:
            raise ConfigError(f"murder.{key} must be a port number, got {merged[key]!r}", key=key)
    if values["parallel"] < 1:
        raise ConfigError("murder.parallel must be at least 1", key="parallel")
    piece = merged["piece_size"]
    values["piece_size"] = None if piece in (None, "", 0) else number(piece, "piece_size", int)
    values["layout"] = _layout(merged["layout"])
    values["ssh_backend"] = _ssh_backend(merged["ssh_backend"])
    values["force"] = boolean(merged["force"], "force")
    values["strict_host_keys"] = boolean(merged["strict_host_keys"], "strict_host_keys")
    known = merged["known_hosts"]
    if isinstance(known, str):
        known = [known]
    if known is not None and not (
        isinstance(known, list | tuple) and all(isinstance(p, str) and p for p in known)
    ):
        raise ConfigError(f"murder.known_hosts must be a path or a list of paths, not {known!r}")
    values["known_hosts"] = tuple(known or ())
    values["keep_releases"] = _keep(merged["keep_releases"])

    for key in ("tracker", "seeder"):
        host = merged[key]
        if host is not None and (not isinstance(host, str) or not host.strip()):
            raise ConfigError(f"murder.{key} must be a host string, not {host!r}", key=key)
        values[key] = host.strip() if host else None
    values["peers"] = host_list(merged["peers"], "peers")
    for key in ("tracker", "seeder"):
        if values[key]:
            split_host(values[key])
    check_roles(values["seeder"], values["peers"])

    for key in _PATH_KEYS:
        path = merged[key]
        if path is not None and (not isinstance(path, str) or not path.strip()):
            raise ConfigError(f"murder.{key} must be a path, not {path!r}", key=key)
        values[key] = path.rstrip("/") or "/" if path else None
    for key in ("remote_path", "temp_path"):
        if not values[key] or not values[key].startswith("/") or values[key] == "/":
            if key == "temp_path" and values[key].startswith("~/") and values[key] != "~/":
                continue
            raise ConfigError(
                f"murder.{key} must be an absolute path other than '/'"
                + (" (or one under '~/')" if key == "temp_path" else "")
                + f", got {merged[key]!r}",
                key=key,
            )
    refuse_shared_temp(values["temp_path"])
    for key in ("tracker_url", "tracker_token", "tracker_register", "local_path", "wheel_dir"):
        values[key] = str(merged[key]) if merged[key] not in (None, "") else None
    token = values["tracker_token"]
    if token is not None and not all(ch.isalnum() or ch in "-_" for ch in token):
        raise ConfigError("murder.tracker_token may hold letters, digits, '-' and '_' only")
    values["python"] = str(merged["python"] or "python3")
    tag = merged["tag"]
    values["tag"] = validate_tag(str(tag)) if tag not in (None, "") else default_tag()
    lt = merged["libtorrent"] or {}
    if not isinstance(lt, Mapping):
        raise ConfigError(f"murder.libtorrent must be a mapping, not {lt!r}", key="libtorrent")
    values["libtorrent"] = dict(lt)
    return Settings(**values)


def _layout(value: Any) -> str:
    layout = DEFAULTS["layout"] if value in (None, "") else value
    if layout not in LAYOUTS:
        raise ConfigError(
            f"murder.layout must be one of {', '.join(LAYOUTS)}, not {value!r}", key="layout"
        )
    return str(layout)


def _ssh_backend(value: Any) -> str:
    backend = DEFAULTS["ssh_backend"] if value in (None, "") else value
    if backend not in SSH_BACKENDS:
        raise ConfigError(
            f"murder.ssh_backend must be one of {', '.join(SSH_BACKENDS)}, not {value!r}",
            key="ssh_backend",
        )
    if backend == "asyncssh" and importlib.util.find_spec("asyncssh") is None:
        raise ConfigError(
            "murder.ssh_backend asyncssh needs the asyncssh package: "
            "pip install 'fabmurder[asyncssh]'",
            key="ssh_backend",
        )
    return str(backend)


def _keep(value: Any) -> int:
    if value in (None, ""):
        return int(DEFAULTS["keep_releases"])
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
