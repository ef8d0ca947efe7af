"""Run the host-side command line (``python -m fabmurder ...``) from tests, as a host would."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fabmurder ARGS`` with this interpreter and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "fabmurder", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
