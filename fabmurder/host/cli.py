"""What every host-side command shares: JSON on stdout, one sentence on stderr, exit codes.

Exit codes follow the host-side contract: 0 success, 1 failure, 2 usage
error (argparse and invalid arguments), 3 "already running".
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Callable

from fabmurder.errors import ConfigError, MurderError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNNING = 3


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never above the hard limit).

    The soft limit is 1,024 unless raised; libtorrent caps its connections
    at about 0.8 x (soft limit - 20), and the tracker refuses connections it
    has no file descriptor for. Returns the soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def emit(obj: Any) -> None:
    """Print ``obj`` as one line of JSON on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def fail(message: str) -> None:
    """Print a one-sentence error for humans on stderr."""
    sys.stderr.write(f"fabmurder: {message}\n")
    sys.stderr.flush()


def run(parser: argparse.ArgumentParser, argv: list[str], body: Callable[[Any], int]) -> int:
    """Parse ``argv`` with ``parser`` and run ``body``, turning expected errors into exit codes."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        return body(args)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_USAGE
    except MurderError as exc:
        fail(str(exc))
        return EXIT_FAILED
