"""``stats``: fetch the tracker's ``/stats`` JSON from the tracker host itself.

Run on the tracker host over SSH, so the control machine needs no route to
the tracker's port.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request

from fabmurder.errors import MurderError
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the tracker answers on loopback or the fleet network: anything slower is a failure
TIMEOUT = 5.0


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


def parser() -> argparse.ArgumentParser:
    """Return the ``stats`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder stats", description=__doc__)
    p.add_argument("--url", required=True, help="the tracker's /stats URL")
    p.add_argument("--timeout", type=float, default=TIMEOUT)
    return p


def main(argv: list[str]) -> int:
    """Run ``stats`` and print the tracker's JSON."""

    def body(args: argparse.Namespace) -> int:
        emit(fetch(args.url, args.timeout))
        return EXIT_OK

    return run(parser(), argv, body)
