"""``allow``: add or remove an info-hash in the tracker's allow-list file, atomically.

The tracker rereads the file when it changes; each edit writes a new file
next to it and renames it into place, so the tracker never reads half a
list and two edits never interleave lines.
"""

from __future__ import annotations

import argparse
import fcntl
import os

from fabmurder.errors import ConfigError
from fabmurder.host import privatedir
from fabmurder.host.atomic import replace_file
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def validate_info_hash(text: str) -> str:
    """Return ``text`` lower-cased if it is 40 hex digits.

    :raises ConfigError: otherwise.
    """
    value = text.strip().lower()
    if len(value) != 40 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"info-hash {text!r} is not 40 hex digits", key="info_hash")
    return value


def read_entries(path: str) -> dict[str, str | None]:
    """Return info-hash -> deploy token (or None) from the allow file, in file order."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return {}
    entries: dict[str, str | None] = {}
    for line in lines:
        words = line.split("#", 1)[0].lower().split()
        if not words:
            continue
        word = words[0]
        if len(word) == 40 and all(c in "0123456789abcdef" for c in word) and word not in entries:
            entries[word] = line.split("#", 1)[0].split()[1] if len(words) > 1 else None
    return entries


def read_hashes(path: str) -> list[str]:
    """Return the info-hashes listed in the allow file, in order (empty if it is missing)."""
    return list(read_entries(path))


def validate_token(text: str) -> str:
    """Return ``text`` if it can be a deploy token (letters, digits, '-', '_').

    :raises ConfigError: otherwise.
    """
    if (
        not text
        or len(text) > 128
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in text)
    ):
        raise ConfigError("a deploy token holds 1-128 letters, digits, '-' or '_'", key="token")
    return text


def update(
    path: str, add: str | None = None, remove: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Add and/or remove one info-hash in the allow file and return what changed.

    :param token: the deploy token served with ``add`` (``/announce/<token>``).
    :raises ConfigError: if an info-hash is not 40 hex digits or the token is invalid.
    """
    add = validate_info_hash(add) if add is not None else None
    remove = validate_info_hash(remove) if remove is not None else None
    token = validate_token(token) if token is not None else None
    directory = privatedir.ensure(os.path.dirname(os.path.abspath(path)))
    # A lock beside the file serialises concurrent edits; the rename keeps readers safe.
    with open(os.path.join(directory, "." + os.path.basename(path) + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_entries(path)
        changed = False
        if add and (add not in entries or entries[add] != token):
            entries[add] = token
            changed = True
        if remove and remove in entries:
            del entries[remove]
            changed = True
        hashes = list(entries)
        if changed or not os.path.exists(path):
            text = "".join(f"{h} {t}\n" if t else f"{h}\n" for h, t in entries.items())
            # deploy tokens are secrets: only the tracker's user reads them
            replace_file(path, text.encode("utf-8"), mode=0o600)
    return {"file": os.path.abspath(path), "changed": changed, "hashes": hashes}


def parser() -> argparse.ArgumentParser:
    """Return the ``allow`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder allow", description=__doc__)
    p.add_argument("--file", required=True, help="the tracker's allow file")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--add", help="info-hash (40 hex digits) to allow")
    group.add_argument("--remove", help="info-hash (40 hex digits) to forget")
    p.add_argument("--token", help="with --add: serve it under /announce/TOKEN as well")
    return p


def main(argv: list[str]) -> int:
    """Run ``allow`` and print what changed."""

    def body(args: argparse.Namespace) -> int:
        emit(update(args.file, add=args.add, remove=args.remove, token=args.token))
        return EXIT_OK

    return run(parser(), argv, body)
