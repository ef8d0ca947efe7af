"""The agent's status file: how it is written and read back, and ``poll`` for the control side.

The seed and peer agents rewrite the file atomically (temp file + rename).
What it holds, and the checks that read it back, are the host contract's
(:mod:`fabmurder.contract`); :func:`read_status` applies them to a file.

``python -m fabmurder poll --status-file F --pid-file P [--wait S]`` is the
control side's view of one agent: its status (or None while it cannot be
read) and whether the process its PID file names is still ours and alive.
With ``--wait`` it answers early, the moment the agent is installed, has
failed or stopped, or is gone, and otherwise after ``S`` seconds: one poll
covers a whole poll interval, and the end of a download is seen at once.
"""

from __future__ import annotations

import argparse
import json
import time

from fabmurder.contract import (
    FINAL_STATES,
    STATES,
    STATUS_FIELDS,
    StatusError,
    check_status,
    parse_status,
)
from fabmurder.host import daemon
from fabmurder.host.atomic import replace_file
from fabmurder.host.cli import EXIT_OK, emit, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from fabmurder.contract import PollReply, StatusRecord

__all__ = [
    "STATES",
    "STATUS_FIELDS",
    "StatusError",
    "check_status",
    "parse_status",
    "poll",
    "read_status",
    "write_status",
]

#: seconds between two looks at the files while ``poll`` waits
POLL_STEP = 0.05


def read_status(path: str) -> StatusRecord:
    """Read and validate the status file at ``path``.

    :raises StatusError: if it is unreadable or malformed.
    """
    try:
        with open(path, "rb") as fh:
            return parse_status(fh.read(1024 * 1024))
    except OSError as exc:
        raise StatusError(f"cannot read status file {path}: {exc.strerror}") from exc


def write_status(path: str, status: dict[str, Any]) -> None:
    """Replace the status file at ``path`` atomically with ``status``."""
    replace_file(path, json.dumps(status).encode("utf-8"))


def poll(status_path: str, pid_path: str, wait: float = 0.0) -> PollReply:
    """Return an agent's status and liveness, waiting up to ``wait`` s for it to end.

    An agent whose end looks due within another ``wait`` at the rate this
    poll saw (or that verifies or extracts already) is waited for up to that
    long again: a new poll starting just then would see its end late.
    """
    start = time.monotonic()
    deadline = start + wait
    extended = False
    first: tuple[float, int] | None = None
    while True:
        status: StatusRecord | None = None
        error = None
        try:
            status = read_status(status_path)
        except StatusError as exc:
            error = str(exc)  # not written yet, or caught mid-rewrite by a reader without rename
        alive = daemon.is_ours(daemon.read_pid_file(pid_path))
        ended = status is not None and (status["installed"] or status["state"] in FINAL_STATES)
        now = time.monotonic()
        if status is not None and first is None:
            first = (now, status["done"])
        if not (ended or not alive) and now >= deadline and not extended and wait > 0:
            extended = True
            if status is not None and first is not None and _end_due(status, first, now, wait):
                deadline = now + wait
        if ended or not alive or now >= deadline:
            return {"status": status, "alive": alive, "error": error}
        time.sleep(POLL_STEP)  # bounded by the deadline: a look at two small files


def _end_due(status: StatusRecord, first: tuple[float, int], now: float, wait: float) -> bool:
    """Return True if the agent should be installed within ``wait`` s."""
    if status["state"] in ("verifying", "extracting"):
        return True
    left = status["total"] - status["done"]
    rate = (status["done"] - first[1]) / max(now - first[0], 1e-3)
    return status["total"] > 0 and (left <= 0 or (rate > 0 and left / rate <= wait))


def parser() -> argparse.ArgumentParser:
    """Return the ``poll`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder poll", description=__doc__)
    p.add_argument("--status-file", required=True)
    p.add_argument("--pid-file", required=True)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the agent's end")
    return p


def main(argv: list[str]) -> int:
    """Run ``poll`` and print its reply."""

    def body(args: argparse.Namespace) -> int:
        emit(poll(args.status_file, args.pid_file, max(0.0, args.wait)))
        return EXIT_OK

    return run(parser(), argv, body)
