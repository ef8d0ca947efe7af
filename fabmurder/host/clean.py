"""``clean``: remove fabmurder's temp files under ``temp_path``, and nothing else.

Only direct children of ``temp_path`` with the names the host contract
gives fabmurder's files (:func:`fabmurder.contract.classify`: tarballs,
torrents, PID files, logs, status files and their temporary siblings) are
removed; symlinks are unlinked, never followed; files of a
release whose seeder or peer is still running are left alone.
"""

from __future__ import annotations

import argparse
import os

from fabmurder.contract import TRACKER_PID, classify
from fabmurder.errors import MurderError
from fabmurder.host import daemon, privatedir
from fabmurder.host.cli import EXIT_OK, emit, run
from fabmurder.tags import validate_tag

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["classify", "clean", "live_tags", "main", "parser"]


def _alive(temp_path: str, name: str) -> bool:
    return daemon.is_ours(daemon.read_pid_file(os.path.join(temp_path, name)))


def live_tags(temp_path: str) -> set[str]:
    """Return the tags whose seeder or peer daemon is running on this host."""
    tags = set()
    for name in os.listdir(temp_path):
        found = classify(name)
        if found and found[0] == "agent" and name.endswith(".pid") and _alive(temp_path, name):
            assert found[1] is not None
            tags.add(found[1])
    return tags


def clean(temp_path: str, tag: str | None = None) -> dict[str, Any]:
    """Remove fabmurder's temp files (of ``tag``, or of every release not in use).

    :raises MurderError: if ``tag`` is given and its seeder or peer is still running,
        or ``temp_path`` is not a directory.
    """
    if tag is not None:
        validate_tag(tag)
    if not os.path.lexists(temp_path):
        return {"temp_path": temp_path, "removed": [], "kept": []}
    if not os.path.isdir(temp_path):
        raise MurderError(f"temp_path {temp_path} is not a directory")
    # Never sweep a shared or someone else's directory for names that look like ours.
    root = os.path.realpath(privatedir.ensure(temp_path, create=False))
    live = live_tags(root)
    if tag is not None and tag in live:
        raise MurderError(
            f"release {tag} still has a running seeder or peer on this host; stop it first"
        )
    tracker_alive = _alive(root, TRACKER_PID)
    removed, kept = [], []
    for name in sorted(os.listdir(root)):
        found = classify(name)
        if found is None:
            continue
        kind, file_tag = found
        if tag is not None and (kind == "tracker" or file_tag != tag):
            continue
        if (kind == "tracker" and tracker_alive) or (file_tag is not None and file_tag in live):
            kept.append(name)
            continue
        path = os.path.join(root, name)
        # Re-derive the parent so that nothing outside temp_path can be named.
        if os.path.dirname(path) != root or os.path.isdir(path) and not os.path.islink(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(name)
    return {"temp_path": root, "removed": removed, "kept": kept}


def parser() -> argparse.ArgumentParser:
    """Return the ``clean`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder clean", description=__doc__)
    p.add_argument("--temp-path", required=True)
    p.add_argument("--tag", default=None, help="only this release's files")
    return p


def main(argv: list[str]) -> int:
    """Run ``clean`` and print what was removed."""

    def body(args: argparse.Namespace) -> int:
        emit(clean(args.temp_path, args.tag))
        return EXIT_OK

    return run(parser(), argv, body)
