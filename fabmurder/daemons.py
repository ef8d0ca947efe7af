"""Start and stop the agents on the hosts: the seeder, the peers, and every daemon by PID file.

Each function builds one host-side command line (every argument quoted by
:func:`~fabmurder.remote.agent_command`) from the plan and runs it on a
role host. The agents write their PID files, logs and status files under
``temp_path`` with the names :mod:`fabmurder.contract` gives them; stopping
goes through those PID files only (``finish`` checks each PID is still
ours), never a name pattern.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fabric import Connection

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.errors import HostError
from fabmurder.plan import Plan
from fabmurder.remote import (
    QUIET,
    ConnectionPool,
    HostResults,
    agent_command,
    failure_reason,
    quote,
    run_agent,
    shell,
)
from fabmurder.report import Event, EventCallback

if TYPE_CHECKING:
    from fabmurder.contract import FinishReply, StopRecord


def rate_args(s: Settings, download: bool) -> list[object]:
    """Return the rate-limit and libtorrent-settings arguments of an agent."""
    args: list[object] = []
    if s.upload_rate_limit:
        args += ["--upload-rate-limit", s.upload_rate_limit]
    if download and s.download_rate_limit:
        args += ["--download-rate-limit", s.download_rate_limit]
    if s.libtorrent:
        args += ["--settings", json.dumps(dict(s.libtorrent), sort_keys=True)]
    return args


def start_seed(pool: ConnectionPool, plan: Plan, emit: EventCallback) -> int | None:
    """Start seeding the run's release on the seeder, detached; return its PID."""
    s = plan.s
    assert s.seeder
    # the allow-list travels on stdin, as a peer's does: no command grows with N
    allow = s.tmp(contract.allow_file("seed", s.tag))
    args: list[object] = [
        "--torrent", s.tmp(contract.torrent(s.tag)), "--save-path", s.temp_path,
        "--bind", plan.address(s.seeder), "--port", s.peer_port,
        "--status-file", s.tmp(contract.status_file("seed", s.tag)), "--tag", s.tag,
        "--allow-file", allow, "--peers", max(1, len(s.peers)), *rate_args(s, download=False),
    ]  # fmt: skip
    data = run_agent(
        pool.get(s.seeder), s, "daemon", "start",
        "--pid-file", s.tmp(contract.pid_file("seed", s.tag)),
        "--log", s.tmp(contract.log_file("seed", s.tag)),
        *stdin_file("text", plan.allow_text, allow),
        "--", "seed", *args, ok=(0, 3), stdin=plan.allow_text,
    )  # fmt: skip
    running = "already seeding" if data["exit"] == 3 else f"seeding (pid {data.get('pid')})"
    emit(Event("host", running, s.seeder, {"ok": True}))
    pid = data.get("pid")
    return pid if isinstance(pid, int) else None


def stdin_file(encoding: str, text: str, path: str) -> list[str]:
    """Return the ``--stdin-file ENCODING:BYTES:PATH`` option that lands ``text`` at ``path``."""
    return ["--stdin-file", f"{encoding}:{len(text.encode())}:{path}"]


def place_files(s: Settings, torrent: Path, allow: str) -> tuple[str, list[str], str]:
    """Return how a peer's start lands ``torrent`` and the allow-list: a step, options, stdin.

    The torrent (it holds the deploy token) travels as base64 on the
    command's stdin, never on a command line, whatever its size, and the
    allow-list after it. The ``--stdin-file`` options (for ``daemon start``,
    or ``put``) write each into the private ``temp_path`` (made 0700 when
    missing) by a new 0600 temp file renamed over the name, so a symlink
    planted there is never followed; the agent's own start lands them, so
    no other Python process starts for it. The shell step makes
    ``destination_path`` (the release area keeps the modes it is given).
    """
    assert s.destination_path
    encoded = base64.b64encode(torrent.read_bytes()).decode("ascii")
    files = [
        *stdin_file("base64", encoded, s.tmp(contract.torrent(s.tag))),
        *stdin_file("text", allow, s.tmp(contract.allow_file("peer", s.tag))),
    ]
    return f"mkdir -p -- {quote(s.destination_path)}", files, encoded + allow


def start_peer(
    pool: ConnectionPool, plan: Plan, conn: Connection, torrent: Path, sha256: str
) -> int | None:
    """Put the torrent on one peer and start its agent, detached; return its PID."""
    s = plan.s
    assert s.destination_path and s.seeder
    host = pool.host_of(conn)
    before, files, stdin = place_files(s, torrent, plan.allow_text)
    args: list[object] = [
        "--torrent", s.tmp(contract.torrent(s.tag)), "--save-path", s.temp_path,
        "--bind", plan.address(host), "--port", s.peer_port,
        "--status-file", s.tmp(contract.status_file("peer", s.tag)),
        "--sha256", sha256, "--dest", s.destination_path, "--tag", s.tag,
        "--timeout", s.timeout, "--first-byte-wait", plan.first_byte_wait,
        "--seed-after", s.seed_after,
        "--seeder", plan.address(s.seeder),
        "--allow-file", s.tmp(contract.allow_file("peer", s.tag)), *rate_args(s, download=True),
    ]  # fmt: skip
    if host in plan.stripes:
        # Each peer asks the seeder for its own slice first (host-side stripe_priorities).
        args += ["--stripe", plan.stripes[host]]
    if s.force:
        args.append("--force")
    if host in plan.report_ids:
        # the agent reports to the tracker's /progress, which the watch follows
        args += ["--report-id", plan.report_ids[host]]
    data = run_agent(
        conn, s, "daemon", "start",
        "--pid-file", s.tmp(contract.pid_file("peer", s.tag)),
        "--log", s.tmp(contract.log_file("peer", s.tag)), *files,
        "--", "peer", *args, ok=(0, 3), before=before, stdin=stdin,
    )  # fmt: skip
    pid = data.get("pid")
    return pid if isinstance(pid, int) else None


def _remove_upload(s: Settings, tag: str) -> str:
    return "rm -rf -- " + " ".join(quote(s.tmp(name)) for name in contract.upload(tag))


def finish_on(
    pool: ConnectionPool,
    s: Settings,
    roles: Mapping[str, list[str]],
    tag: str | None,
    *,
    clean: bool = False,
) -> HostResults[FinishReply]:
    """Run ``finish`` on each host for its ``roles`` (of release ``tag``, or all); return its reply.

    One SSH command and one host-side process per host; with ``clean``
    (needs ``tag``) the release's temp files and upload go too. With
    ``tag``, each reply holds the last status of the host's seed and peer
    agents, read after their stop (:func:`fabmurder.contract.parse_finish`).
    A host whose ``finish`` exits non-zero or prints a garbled reply is a
    failure (a :class:`~fabmurder.errors.HostError` in the result).
    """

    def finish(conn: Connection) -> FinishReply:
        """Stop (and clean) on one host; return its reply."""
        host = pool.host_of(conn)
        args: list[object] = ["--temp-path", s.temp_path]
        for role in roles[host]:
            args += ["--role", role]
        args += ["--tag", tag] if tag else []
        command = f"test -x {quote(s.agent_python)} || exit 0; "
        command += agent_command(s, "finish", *args, *(["--clean"] if clean else []))
        if clean and tag:
            command += f" && {_remove_upload(s, tag)}"
        result = conn.run(command, timeout=120, **QUIET)
        what = "/".join(roles[host])
        if result.exited != 0:
            error = (contract.parse_reply(result.stdout) or {}).get("error")
            why = error if isinstance(error, str) else failure_reason(result)
            raise HostError(host, f"finish {what}: {why}")
        try:
            return contract.parse_finish(result.stdout)
        except contract.StatusError as exc:
            raise HostError(host, f"finish {what}: {exc}") from exc

    return pool.fan_out(roles, finish)


def stopped(
    replies: HostResults[FinishReply],
    roles: Mapping[str, list[str]],
    emit: EventCallback,
    *,
    clean: bool = False,
    quiet: bool = False,
) -> HostResults[list[StopRecord]]:
    """Emit one event per host of what ``finish`` stopped there; return each host's stop records.

    :param quiet: mark the "stopped" events as routine news.
    """
    result: HostResults[list[StopRecord]] = HostResults()
    for host, value in replies.items():
        what = " or ".join(roles[host])
        if isinstance(value, BaseException):
            result[host] = value
            message = f"could not stop {what}" + (" or clean up" if clean else "")
            emit(Event("host", message, host, {"ok": False, "reason": failure_reason(value)}))
            continue
        records = result[host] = list(value["stopped"])
        names = [
            f"{Path(r['pid_file'] or '?').name} pid {r['pid']}" for r in records if r.get("stopped")
        ]
        message = f"stopped {', '.join(names)}" if names else f"no {what} running"
        emit(Event("host", message, host, {"ok": True, "stopped": records, "quiet": quiet}))
    return result


def stop_daemons(
    pool: ConnectionPool,
    s: Settings,
    roles: Mapping[str, list[str]],
    tag: str | None,
    emit: EventCallback,
    *,
    clean: bool = False,
    quiet: bool = False,
) -> HostResults[list[StopRecord]]:
    """Stop the daemons of each host's ``roles`` (of release ``tag``, or all) by their PID files.

    :func:`finish_on`, then :func:`stopped`'s events.

    :param quiet: mark the per-host "stopped" events as routine news.
    :returns: per host, ``finish``'s stop records.
    """
    replies = finish_on(pool, s, roles, tag, clean=clean)
    return stopped(replies, roles, emit, clean=clean, quiet=quiet)


def clean(
    pool: ConnectionPool, s: Settings, hosts: Iterable[str], tag: str | None
) -> HostResults[object]:
    """Remove the temp files of ``tag`` (or all idle ones) and any upload on ``hosts``."""
    args = ["--temp-path", s.temp_path] + (["--tag", tag] if tag else [])
    command = f"test -x {quote(s.agent_python)} || exit 0; " + agent_command(s, "clean", *args)
    if tag:
        command += f" && {_remove_upload(s, tag)}"
    return pool.fan_out(
        hosts, lambda conn: shell(conn, command, "cleaning temp files", timeout=120)
    )
