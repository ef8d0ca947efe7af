"""``digest``: the SHA-256 and size of one file on this host (a release tarball)."""

from __future__ import annotations

import argparse
import os

from fabmurder.errors import MurderError
from fabmurder.host.artifact import sha256_file
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from fabmurder.contract import DigestReply


def digest(path: str) -> DigestReply:
    """Return ``path``'s SHA-256 and size.

    :raises MurderError: when it is not a readable regular file.
    """
    if not os.path.isfile(path):
        raise MurderError(f"{path} is not a file")
    try:
        return {"path": path, "sha256": sha256_file(path), "size": os.path.getsize(path)}
    except OSError as exc:
        raise MurderError(f"cannot read {path}: {exc.strerror}") from exc


def parser() -> argparse.ArgumentParser:
    """Return the ``digest`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder digest", description=__doc__)
    p.add_argument("--file", required=True)
    return p


def main(argv: list[str]) -> int:
    """Run ``digest`` and print its reply."""

    def body(args: argparse.Namespace) -> int:
        emit(digest(args.file))
        return EXIT_OK

    return run(parser(), argv, body)
