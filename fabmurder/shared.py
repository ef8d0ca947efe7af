"""Capistrano's ``shared/``: paths that live beside the releases and are linked into each one.

``murder.linked_dirs`` and ``murder.linked_files`` name paths relative to a
release (``log``, ``config/database.yml``). Before a release is published,
each is made a symlink from ``releases/<tag>/<path>`` to
``destination_path/shared/<path>``; a shared directory is created when
missing, a shared file is created empty. What the release itself shipped at
that path is replaced by the link. Cleanup works inside ``releases/`` only,
so ``shared/`` is never removed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from typing import Any

from fabric import Connection

from fabmurder.errors import ConfigError, DeployError
from fabmurder.layout import Layout
from fabmurder.remote import ConnectionPool, quote, shell
from fabmurder.report import Event, EventCallback
from fabmurder.tags import validate_tag

SHARED = "shared"


def linked_paths(value: Any, key: str) -> tuple[str, ...]:
    """Return the relative paths a ``linked_*`` key names (a list, or a comma/space string).

    :raises ConfigError: for an absolute path, ``..``, or a path that is not a string.
    """
    if value in (None, ""):
        return ()
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"murder.{key} must be a list of relative paths, not {value!r}", key=key)
    paths = []
    for item in items:
        path = posixpath.normpath(str(item)) if isinstance(item, str) and item else ""
        if not path or path.startswith("/") or path == "." or ".." in path.split("/"):
            raise ConfigError(f"murder.{key} holds {item!r}: give a path inside the release")
        paths.append(path)
    return tuple(paths)


def link_command(lay: Layout, tag: str, dirs: Sequence[str], files: Sequence[str]) -> str:
    """Return the command linking ``dirs`` and ``files`` of ``shared/`` into ``releases/<tag>``."""
    release = f"{lay.releases}/{validate_tag(tag)}"
    shared = f"{lay.root}/{SHARED}"
    parts = ["set -e"]
    for path, make in [*((d, "mkdir -p --") for d in dirs), *((f, None) for f in files)]:
        source, target = quote(f"{shared}/{path}"), quote(f"{release}/{path}")
        parent = quote(posixpath.dirname(f"{shared}/{path}"))
        if make:
            parts.append(f"{make} {source}")
        else:
            parts.append(f"mkdir -p -- {parent} && {{ test -e {source} || : > {source}; }}")
        parts.append(f"mkdir -p -- {quote(posixpath.dirname(f'{release}/{path}'))}")
        parts.append(f"rm -rf -- {target} && ln -s -- {source} {target}")
    return "; ".join(parts)


def link(
    pool: ConnectionPool,
    lay: Layout,
    tag: str,
    hosts: Iterable[str],
    dirs: Sequence[str],
    files: Sequence[str],
    emit: EventCallback,
) -> None:
    """Link the shared paths into ``releases/<tag>`` on ``hosts``.

    :raises DeployError: naming each host where linking failed (nothing is published then).
    """
    if not dirs and not files:
        return
    command = link_command(lay, tag, dirs, files)

    def one(conn: Connection) -> None:
        shell(conn, command, "linking shared paths")

    emit(Event("phase", f"linking {len(dirs) + len(files)} shared path(s) into {tag}"))
    result = pool.fan_out(hosts, one)
    if result.failed:
        raise DeployError(f"linking shared paths failed on {len(result.failed)} host(s)",
                          result.failed)  # fmt: skip
