"""``token``: make or read the tracker's URL token, a secret of the deploy user's own.

``python -m fabmurder token --file PATH [--new]`` prints ``{"file", "token",
"new"}``. The file lives in ``temp_path`` (checked by
:func:`fabmurder.host.privatedir.ensure`), is written by temp file and
rename with mode 0600 (so a symlink planted at its name is replaced, never
followed), and is read back only if it is this user's and 0600
(:func:`fabmurder.host.privatedir.read_private`). ``--new`` always makes a
fresh token: the control side asks for one whenever it starts the tracker,
so a token file that someone else wrote is never the tracker's token.
The tracker then reads it with ``--token-file``: it never appears on a
command line.
"""

from __future__ import annotations

import argparse
import os

from fabmurder.host import privatedir
from fabmurder.host.atomic import replace_file
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def make_token(path: str) -> str:
    """Write a fresh random token to ``path`` (0600, atomically) and return it."""
    privatedir.ensure(os.path.dirname(os.path.abspath(path)))
    token = os.urandom(16).hex()
    replace_file(path, (token + "\n").encode("ascii"), mode=0o600)
    return token


def get_token(path: str, new: bool = False) -> dict[str, Any]:
    """Return ``{"file", "token", "new"}``: the token in ``path``, made first if asked or missing.

    :raises UnsafeDirectory: if the directory or an existing file is not this user's own.
    """
    privatedir.ensure(os.path.dirname(os.path.abspath(path)))
    made = new or not os.path.lexists(path)
    token = make_token(path) if made else privatedir.read_private(path)
    if not token:
        token, made = make_token(path), True
    return {"file": os.path.abspath(path), "token": token, "new": made}


def parser() -> argparse.ArgumentParser:
    """Return the ``token`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder token", description=__doc__)
    p.add_argument("--file", required=True)
    p.add_argument("--new", action="store_true", help="replace the token with a fresh one")
    return p


def main(argv: list[str]) -> int:
    """Run ``token`` and print the token record."""

    def body(args: argparse.Namespace) -> int:
        emit(get_token(args.file, args.new))
        return EXIT_OK

    return run(parser(), argv, body)
