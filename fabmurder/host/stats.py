"""``stats``: fetch the tracker's ``/stats`` (or ``/progress``) JSON from the tracker host itself.

Run on the tracker host over SSH, so the control machine needs no route to
the tracker's port. With ``--wait S --while-seq N`` it is a long poll of
``/progress``: it asks again every :data:`STEP` seconds while the reply's
``seq`` is still ``N``, and answers at once when it moved (or after ``S``
seconds). The control host's watch keeps one such poll open, so it hears
of a peer's install the moment the peer reports it, at the cost of one
process on one host however many peers there are. With ``--gather G``
as well, a poll whose ``seq`` moved before ``G`` seconds keeps asking
until then and answers with the latest reply: on a large fleet, where a
change comes every few milliseconds, one answer carries a second's
changes (each peer's latest report once) instead of one answer per change.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request

from fabmurder.errors import MurderError
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the tracker answers on loopback or the fleet network: anything slower is a failure
TIMEOUT = 5.0
#: seconds between two asks of a long poll (each is one request to a local tracker)
STEP = 0.1


def fetch(url: str, timeout: float = TIMEOUT) -> Any:
    """Return the JSON document at ``url``.

    :raises MurderError: if the URL is not http(s), unreachable, or not JSON.
    """
    if not url.startswith(("http://", "https://")):
        raise MurderError(f"stats URL {url!r} must be http:// or https://")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            body = response.read(16 * 1024 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        raise MurderError(f"cannot fetch {url}: {exc}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise MurderError(f"{url} did not return JSON: {exc}") from exc


def follow(url: str, wait: float, seq: int, timeout: float = TIMEOUT, gather: float = 0.0) -> Any:
    """Return the JSON at ``url`` once its ``seq`` is no longer ``seq``, or after ``wait`` s.

    :param gather: answer no sooner than this many seconds (at most ``wait``)
        after the start, even once ``seq`` moved, with the latest reply.
    """
    started = time.monotonic()
    deadline = started + wait
    ready = started + min(gather, wait)
    while True:
        doc = fetch(url, timeout)
        now = time.monotonic()
        if not isinstance(doc, dict) or now >= deadline:
            return doc
        if doc.get("seq") != seq and now >= ready:
            return doc
        until = ready if doc.get("seq") != seq else deadline
        time.sleep(min(STEP, max(0.0, until - now)))


def parser() -> argparse.ArgumentParser:
    """Return the ``stats`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder stats", description=__doc__)
    p.add_argument("--url", required=True, help="the tracker's /stats or /progress URL")
    p.add_argument("--timeout", type=float, default=TIMEOUT)
    p.add_argument(
        "--wait", type=float, default=0.0, help="long poll: wait up to this many seconds ..."
    )
    p.add_argument("--while-seq", type=int, help="... while the reply's seq is still this")
    p.add_argument(
        "--gather", type=float, default=0.0, help="... and answer no sooner than this (seconds)"
    )
    return p


def main(argv: list[str]) -> int:
    """Run ``stats`` and print the tracker's JSON."""

    def body(args: argparse.Namespace) -> int:
        if args.wait < 0 or args.wait > 60:
            raise MurderError("--wait must be between 0 and 60 seconds")
        if args.gather < 0 or args.gather > 60:
            raise MurderError("--gather must be between 0 and 60 seconds")
        if args.while_seq is None:
            emit(fetch(args.url, args.timeout))
        else:
            emit(follow(args.url, args.wait, args.while_seq, args.timeout, args.gather))
        return EXIT_OK

    return run(parser(), argv, body)
