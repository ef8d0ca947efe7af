"""What every host-side command shares: JSON on stdout, one sentence on stderr, exit codes.

Exit codes follow the host-side contract: 0 success, 1 failure, 2 usage
error (argparse and invalid arguments), 3 "already running".
"""

from __future__ import annotations

import argparse
import json
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
