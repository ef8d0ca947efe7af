"""``put``: land a file the control side sends, or make a directory for an upload, privately.

``python -m fabmurder put --file PATH [--base64]`` reads the file's content
from stdin (base64 text with ``--base64``) and writes it to ``PATH`` by a
new temp file (``O_EXCL``, mode 0600) renamed over the name, in a directory
:func:`fabmurder.host.privatedir.ensure` has checked is this user's own. A
symlink planted at the name is replaced, never followed, and the content
(a torrent holds the deploy token) is never on a command line. It prints
``{"file", "size"}``.

``--stdin-file ENCODING:BYTES:PATH`` (repeated)
lands several files from one stdin in order, each of exactly ``BYTES``
bytes (``base64`` or ``text``); ``daemon start`` takes the same option, so
a peer's torrent and allow-list land in the process that starts its agent
(each Python start costs the host about 0.06 CPU seconds).

``python -m fabmurder put --dir PATH [--dir PATH ...]`` makes each ``PATH``
a private directory (0700, refused when it is not this user's own), in
order, for an SFTP upload, and prints ``{"dirs"}``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import sys

from fabmurder.errors import MurderError
from fabmurder.host import privatedir
from fabmurder.host.atomic import replace_file
from fabmurder.host.cli import EXIT_OK, emit, run

#: the largest content ``put --file`` takes (a torrent is a few hundred KiB at most)
MAX_BYTES = 64 * 1024 * 1024


def put_file(path: str, data: bytes) -> dict[str, object]:
    """Write ``data`` to ``path`` (0600, atomically) inside a private directory."""
    directory = privatedir.ensure(os.path.dirname(os.path.abspath(path)))
    final = os.path.join(directory, os.path.basename(path))
    replace_file(final, data, mode=0o600, fsync=True)
    return {"file": final, "size": len(data)}


def read_exactly(count: int) -> bytes:
    """Read ``count`` bytes from stdin's descriptor, never one more (the rest is the next's)."""
    chunks, left = [], count
    while left:
        chunk = os.read(sys.stdin.fileno(), min(left, 1 << 16))
        if not chunk:
            raise MurderError(f"put: stdin ended {left} bytes short of {count}")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_stdin(encoded: bool, count: int | None = None) -> bytes:
    """Return stdin's bytes (``count`` of them when given), decoded from base64 when ``encoded``."""
    if count is not None:
        if not 0 <= count <= MAX_BYTES:
            raise MurderError(f"put: a --stdin-file of {count} bytes; at most {MAX_BYTES}")
        data = read_exactly(count)
    else:
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise MurderError(f"put: more than {MAX_BYTES} bytes on stdin")
    if not encoded:
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except binascii.Error as exc:
        raise MurderError(f"put: stdin is not base64: {exc}") from None


#: the encodings of a ``--stdin-file`` spec: True for base64 text
ENCODINGS = {"base64": True, "text": False}


def stdin_file(spec: str) -> tuple[bool, int, str]:
    """Parse ``ENCODING:BYTES:PATH`` into ``(encoded, count, path)`` (argparse type)."""
    encoding, _, rest = spec.partition(":")
    count, _, path = rest.partition(":")
    if encoding not in ENCODINGS or not count.isdigit() or not path:
        raise argparse.ArgumentTypeError(f"--stdin-file {spec!r} is not ENCODING:BYTES:PATH")
    if path.startswith("~/"):
        # inside the spec the shell expands no "~": the default temp_path is the user's own
        path = os.path.expanduser(path)
    return ENCODINGS[encoding], int(count), path


def land(files: list[tuple[bool, int, str]]) -> list[dict[str, object]]:
    """Write each ``(encoded, count, path)`` from the next ``count`` bytes of stdin, in order."""
    return [put_file(path, read_stdin(encoded, count)) for encoded, count, path in files]


def parser() -> argparse.ArgumentParser:
    """Return the ``put`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder put", description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", help="write stdin to this file (0600)")
    what.add_argument(
        "--dir", action="append", help="make this directory private (0700); may be repeated"
    )
    what.add_argument(
        "--stdin-file",
        action="append",
        type=stdin_file,
        help="ENCODING:BYTES:PATH: the next BYTES of stdin (base64 or text) to PATH; repeatable",
    )
    p.add_argument("--base64", action="store_true", help="stdin is base64 text")
    return p


def main(argv: list[str]) -> int:
    """Run ``put`` and print what it wrote."""

    def body(args: argparse.Namespace) -> int:
        if args.dir is not None:
            emit({"dirs": [privatedir.ensure(path) for path in args.dir]})
        elif args.stdin_file is not None:
            emit({"files": land(args.stdin_file)})
        else:
            emit(put_file(args.file, read_stdin(args.base64)))
        return EXIT_OK

    return run(parser(), argv, body)
