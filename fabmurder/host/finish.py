"""``finish``: stop this host's fabmurder daemons of some roles, then remove their temp files.

The end of a deploy on one host, in one process and one SSH round trip:
every daemon whose PID file under ``temp_path`` matches a ``--role`` (and
``--tag``, when given) is stopped by :func:`fabmurder.host.daemon.stop`,
which signals only a PID that is still ours; with ``--clean`` the release's
temp files go next (:func:`fabmurder.host.clean.clean`), which refuses
while any agent of that release still runs. Prints one JSON object:
``{"stopped": [records], "clean": {...} or null}``, each record with its
``pid_file``; when the clean-up fails, the object also holds ``error`` (the
sentence on stderr) and the exit code is 1.

With ``--tag``, the object also holds ``statuses``: for each seed or peer
``--role``, that agent's status file as it was left once the agent was
stopped and before the clean-up removed it (``{"status": <status> | null,
"error"}``, read and checked as ``poll`` reads it). The control side takes
a peer's verdict from it: the tracker's word that a peer installed is
confirmed here, with no ``poll`` of its own.
"""

from __future__ import annotations

import argparse
import os

from fabmurder.contract import AGENT_ROLES, StatusError, status_file
from fabmurder.errors import MurderError
from fabmurder.host import clean, daemon, statusfile
from fabmurder.host.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, emit, fail, run
from fabmurder.tags import validate_tag

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ROLES = ("tracker", "seed", "peer")


def pid_files(temp_path: str, roles: list[str], tag: str | None) -> list[str]:
    """Return the PID files under ``temp_path`` of ``roles`` (of release ``tag``, or any)."""
    try:
        names = sorted(os.listdir(temp_path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        if name == "tracker.pid":
            if "tracker" in roles:
                found.append(name)
            continue
        kind = clean.classify(name)
        if not name.endswith(".pid") or kind is None or kind[0] != "agent":
            continue
        if name.split("-", 1)[0] in roles and (tag is None or kind[1] == tag):
            found.append(name)
    return [os.path.join(temp_path, name) for name in found]


def finish(
    temp_path: str, roles: list[str], tag: str | None, remove: bool, timeout: float
) -> dict[str, Any]:
    """Stop the matching daemons, then (with ``remove``) clean ``tag``'s temp files."""
    if tag is not None:
        validate_tag(tag)
    stopped = []
    for path in pid_files(temp_path, roles, tag):
        stopped.append({**daemon.stop(path, timeout), "pid_file": path})
    result: dict[str, Any] = {"stopped": stopped, "clean": None}
    if tag is not None:
        # read once the agents are gone (their last write is in) and before the clean-up
        result["statuses"] = {
            role: final_status(temp_path, role, tag) for role in roles if role in AGENT_ROLES
        }
    if remove:
        try:
            result["clean"] = clean.clean(temp_path, tag)
        except MurderError as exc:
            result["error"] = str(exc)
    return result


def final_status(temp_path: str, role: str, tag: str) -> dict[str, Any]:
    """Return an agent's status file as ``poll`` reads it: ``{"status", "error"}``."""
    path = os.path.join(temp_path, status_file(role, tag))
    try:
        status = statusfile.read_status(path)
    except StatusError as exc:
        return {"status": None, "error": str(exc)}
    return {"status": status, "error": None}


def parser() -> argparse.ArgumentParser:
    """Return the ``finish`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder finish", description=__doc__)
    p.add_argument("--temp-path", required=True)
    p.add_argument("--role", action="append", choices=ROLES, required=True)
    p.add_argument("--tag", default=None, help="only this release's daemons and files")
    p.add_argument("--clean", action="store_true", help="remove the temp files afterwards")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGKILL")
    return p


def main(argv: list[str]) -> int:
    """Run ``finish``: print what was stopped and removed."""

    def body(args: argparse.Namespace) -> int:
        if args.clean and args.tag is None:
            fail("--clean needs --tag (the clean command removes every idle release)")
            return EXIT_USAGE
        result = finish(args.temp_path, args.role, args.tag, args.clean, args.timeout)
        emit(result)
        if "error" in result:
            fail(result["error"])
            return EXIT_FAILED
        return EXIT_OK

    return run(parser(), argv, body)
