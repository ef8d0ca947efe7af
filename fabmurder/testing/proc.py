"""Process helpers for the fleet: run a command, wait on a condition, stop by PID.

Processes are only ever signalled by PID, and only after checking that the
PID still names the process that was recorded (its start time, field 22 of
``/proc/<pid>/stat``), so a recycled PID is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fabmurder.errors import MurderError


class FleetError(MurderError):
    """The local test fleet could not be brought up, used or torn down."""


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    """Run *argv*, return its stdout, and raise :class:`FleetError` if it fails."""
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, check=False, timeout=60
    )
    if check and proc.returncode != 0:
        raise FleetError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll *condition* until it returns something truthy, and return that.

    :raises FleetError: after *timeout* seconds, naming *what* was awaited.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise FleetError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return value


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def starttime(pid: int) -> int | None:
    """Return the start time of *pid* in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """Tell whether *pid* runs (zombies count as dead) and, if given, started at *started*."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def signal_if_ours(pid: int, started: int | None, sig: int) -> bool:
    """Send *sig* to *pid* if it still is the recorded process; return whether it was sent."""
    if not is_alive(pid, started):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def terminate(procs: Iterable[tuple[int, int | None]], timeout: float = 5.0) -> None:
    """Stop every ``(pid, starttime)``: SIGTERM, wait up to *timeout*, then SIGKILL."""
    targets = [(pid, started) for pid, started in procs if is_alive(pid, started)]
    for pid, started in targets:
        signal_if_ours(pid, started, signal.SIGTERM)

    def all_gone() -> bool:
        for pid, _ in targets:
            _reap(pid)
        return not any(is_alive(pid, started) for pid, started in targets)

    try:
        wait_until(all_gone, timeout, "processes to exit on SIGTERM")
    except FleetError:
        for pid, started in targets:
            signal_if_ours(pid, started, signal.SIGKILL)
        wait_until(all_gone, timeout, "processes to exit on SIGKILL")
