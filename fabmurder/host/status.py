"""``status``: the daemons, status files and releases on this host, as one JSON object."""

from __future__ import annotations

import argparse
import os

from fabmurder.host import daemon
from fabmurder.host.cli import EXIT_OK, emit, run
from fabmurder.host.statusfile import StatusError, read_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def host_status(temp_path: str, dest: str | None = None) -> dict[str, Any]:
    """Describe fabmurder's state on this host.

    ``daemons`` maps each PID file's name (``seed-v1``) to its pid, role and
    whether it is alive and ours; ``agents`` maps each status file's name to
    its content (or an ``error``); ``releases`` lists ``dest``'s releases and
    ``partials`` any leftover partial extractions.
    """
    daemons: dict[str, Any] = {}
    agents: dict[str, Any] = {}
    names = sorted(os.listdir(temp_path)) if os.path.isdir(temp_path) else []
    for name in names:
        path = os.path.join(temp_path, name)
        if name.endswith(".pid"):
            daemons[name[: -len(".pid")]] = daemon.status(path)
        elif name.endswith(".status.json"):
            try:
                agents[name[: -len(".status.json")]] = read_status(path)
            except StatusError as exc:
                agents[name[: -len(".status.json")]] = {"error": str(exc)}
    releases: list[str] = []
    partials: list[str] = []
    if dest and os.path.isdir(dest):
        for name in sorted(os.listdir(dest)):
            if not os.path.isdir(os.path.join(dest, name)):
                continue
            if name.startswith("."):
                if ".partial-" in name or ".old-" in name:
                    partials.append(name)
            else:
                releases.append(name)
    return {
        "temp_path": os.path.abspath(temp_path),
        "dest": os.path.abspath(dest) if dest else None,
        "daemons": daemons,
        "agents": agents,
        "releases": releases,
        "partials": partials,
    }


def parser() -> argparse.ArgumentParser:
    """Return the ``status`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder status", description=__doc__)
    p.add_argument("--temp-path", required=True)
    p.add_argument("--dest", default=None, help="destination_path, to list releases")
    return p


def main(argv: list[str]) -> int:
    """Run ``status`` and print its JSON."""

    def body(args: argparse.Namespace) -> int:
        emit(host_status(args.temp_path, args.dest))
        return EXIT_OK

    return run(parser(), argv, body)
