"""``token``: make or read the tracker's URL token, a secret of the deploy user's own.

``python -m fabmurder token --file PATH [--new | --stdin | --read]`` prints ``{"file", "token",
"new"}``. The file lives in ``temp_path`` (checked by
:func:`fabmurder.host.privatedir.ensure`), is written by temp file and
rename with mode 0600 (so a symlink planted at its name is replaced, never
followed), and is read back only if it is this user's and 0600
(:func:`fabmurder.host.privatedir.read_private`). Without ``--new`` an
existing token is kept, so a running tracker and the control side agree;
a file another user wrote is never taken, since nobody else can write in
a private directory, and a file that is not this user's 0600 is refused.
``--stdin`` keeps a token the user configured (``murder.tracker_token``),
read from stdin so that it never appears on a command line either. The
tracker then reads it with ``--token-file``.
"""

from __future__ import annotations

import argparse
import os
import sys

from fabmurder.errors import ConfigError
from fabmurder.host import privatedir
from fabmurder.host.atomic import replace_file
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def make_token(path: str, token: str | None = None) -> str:
    """Write ``token`` (default: a fresh random one) to ``path`` (0600, atomically); return it."""
    privatedir.ensure(os.path.dirname(os.path.abspath(path)))
    token = token or os.urandom(16).hex()
    replace_file(path, (token + "\n").encode("ascii"), mode=0o600)
    return token


def check_token(token: str) -> str:
    """Return ``token`` if it may be a URL path element (letters, digits, '-', '_').

    :raises ConfigError: otherwise.
    """
    allowed = all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    if not token or len(token) > 256 or not allowed:
        raise ConfigError("the token may hold letters, digits, '-' and '_' only (1-256 of them)")
    return token


def get_token(path: str, new: bool = False, given: str | None = None) -> dict[str, Any]:
    """Return ``{"file", "token", "new"}``: the token in ``path``, made first if asked or missing.

    :param given: the token to keep (the configured ``tracker_token``),
        written when the file holds another.
    :raises UnsafeDirectory: if the directory or an existing file is not this user's own.
    """
    privatedir.ensure(os.path.dirname(os.path.abspath(path)))
    made = new or not os.path.lexists(path)
    token = None if made else privatedir.read_private(path)
    if given is not None and token != given:
        token, made = make_token(path, given), True
    elif not token:
        token, made = make_token(path), True
    return {"file": os.path.abspath(path), "token": token, "new": made}


def parser() -> argparse.ArgumentParser:
    """Return the ``token`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder token", description=__doc__)
    p.add_argument("--file", required=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--new", action="store_true", help="replace the token with a fresh one")
    how.add_argument(
        "--stdin", action="store_true", help="keep the token given on stdin (never on argv)"
    )
    how.add_argument("--read", action="store_true", help="only read a token there is (no write)")
    return p


def main(argv: list[str]) -> int:
    """Run ``token`` and print the token record."""

    def body(args: argparse.Namespace) -> int:
        if args.read:
            token = privatedir.read_private(args.file)
            emit({"file": os.path.abspath(args.file), "token": token, "new": False})
            return EXIT_OK
        given = check_token(sys.stdin.read(1024).strip()) if args.stdin else None
        emit(get_token(args.file, args.new, given))
        return EXIT_OK

    return run(parser(), argv, body)
