"""Start and stop the host-side daemons: tracker, seeder and peers.

Each function builds one host-side command line (every argument quoted by
:func:`~fabmurder.remote.agent_command`) and runs it on a role host of a
:class:`~fabmurder.roles.Run`. The daemons write their PID files, logs and
status files under ``temp_path``; stopping goes through those PID files
only (``daemon stop`` checks the PID is still ours), never a name pattern.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fabric import Connection
from fabric.group import GroupResult

from fabmurder.config import Settings
from fabmurder.errors import HostError
from fabmurder.remote import QUIET, agent_command, failure_reason, parse_json, run_agent
from fabmurder.report import Event
from fabmurder.roles import Run, probe, quote, require_reachable, shell
from fabmurder.tags import validate_tag


def tracker_token(run: Run) -> str:
    """Return the tracker's URL token, made once and kept on the tracker host."""
    s = run.s
    assert s.tracker
    if run.tracker_token:
        return run.tracker_token
    path = s.tmp("tracker.token")
    wanted = s.tracker_token or secrets.token_hex(16)
    tmp = quote(path + ".tmp")
    write = f"(umask 077 && printf %s {quote(wanted)} > {tmp} && mv {tmp} {quote(path)})"
    keep = "" if s.tracker_token else f"test -s {quote(path)} || "
    command = f"mkdir -p {quote(s.temp_path)} && {{ {keep}{write}; }} && cat {quote(path)}"
    token = shell(run.conn(s.tracker), command, "making the tracker token").stdout.strip()
    if not token:
        raise HostError(s.tracker, f"the tracker token file {path} is empty")
    run.tracker_token = token
    return token


def deploy_token(run: Run) -> str:
    """Return this run's deploy token, made on first use.

    The announce URL of the run's torrent names it, and the info-hash is
    registered with it: the tracker serves that swarm, and only that swarm,
    under it, until the run removes the info-hash again.
    """
    if run.deploy_token is None:
        run.deploy_token = secrets.token_hex(16)
    return run.deploy_token


def tracker_urls(run: Run, deploy: bool = True) -> tuple[str, str | None]:
    """Return the announce URL and, for fabmurder's own tracker, the stats URL.

    :param deploy: announce under this run's deploy token (for the torrent it
        creates) rather than under the tracker's own token.
    """
    s = run.s
    if s.tracker_url:
        return s.tracker_url, None
    s.require("tracker")
    assert s.tracker
    if s.tracker not in run.addresses:
        require_reachable(run, probe(run, [s.tracker]), s.tracker)
    addr = run.addresses[s.tracker]
    host = f"[{addr}]" if ":" in addr else addr
    token = tracker_token(run)
    base = f"http://{host}:{s.tracker_port}"
    announce = f"{base}/announce/{deploy_token(run) if deploy else token}"
    return announce, f"{base}/stats/{token}"


def start_tracker_daemon(run: Run) -> str:
    """Start fabmurder's tracker on the tracker host, detached; say whether it already ran."""
    s = run.s
    assert s.tracker
    addr = run.addresses[s.tracker]
    data = run_agent(
        run.conn(s.tracker), s, "daemon", "start",
        "--pid-file", s.tmp("tracker.pid"), "--log", s.tmp("tracker.log"), "--",
        "tracker", "--bind", addr, "--port", s.tracker_port,
        "--allow-file", s.tmp("tracker.allow"),
        # "=" keeps a configured token that starts with "-" from reading as an option
        f"--token={tracker_token(run)}",
        ok=(0, 3),
    )  # fmt: skip
    state = "already running" if data["exit"] == 3 else f"started (pid {data.get('pid')})"
    run.emit(Event("host", f"tracker {state}", s.tracker, {"ok": True}))
    return state


def register(run: Run, info_hash: str, add: bool = True) -> None:
    """Allow (or, with ``add=False``, disallow) a torrent on the tracker.

    fabmurder's own tracker gets it in its allow-list file. An external
    tracker (``tracker_url``) gets ``tracker_register``, a shell command run
    on the ``tracker`` host with ``{info_hash}`` replaced, when one is set.
    """
    s = run.s
    if s.tracker_url:
        if add and s.tracker and s.tracker_register:
            command = s.tracker_register.replace("{info_hash}", quote(info_hash))
            shell(run.conn(s.tracker), command, "registering the torrent with the tracker")
        return
    if not s.tracker:
        return
    flag = "--add" if add else "--remove"
    token = ["--token", run.deploy_token] if add and run.deploy_token else []
    args = ("allow", "--file", s.tmp("tracker.allow"), flag, info_hash, *token)
    run_agent(run.conn(s.tracker), s, *args)


def stop_daemons(
    run: Run, roles: dict[str, list[str]], tag: str | None, clean: bool = False
) -> GroupResult:
    """Stop the daemons of each host's ``roles`` (of release ``tag``, or all) by their PID files.

    One SSH command and one host-side process per host (``finish``); with
    ``clean`` (needs ``tag``) the release's temp files and upload go too.

    :returns: per host, ``daemon stop``'s records (each with its ``pid_file``).
    """
    s = run.s

    def finish(conn: Connection) -> list[dict[str, Any]]:
        """Stop (and clean) on one host; return the stop records."""
        host = run.pool.host_of(conn)
        args: list[object] = ["--temp-path", s.temp_path]
        for role in roles[host]:
            args += ["--role", role]
        args += ["--tag", tag] if tag else []
        command = f"test -x {quote(s.agent_python)} || exit 0; "
        command += agent_command(s, "finish", *args, *(["--clean"] if clean else []))
        if clean and tag:
            uploads = [quote(s.tmp(f"upload-{tag}")), quote(s.tmp(f"upload-{tag}.tar"))]
            command += f" && rm -rf -- {' '.join(uploads)}"
        result = conn.run(command, timeout=120, **QUIET)
        data = parse_json(result.stdout) or {}
        if result.exited != 0:
            why = data.get("error") or failure_reason(result)
            raise HostError(host, f"finish {'/'.join(roles[host])}: {why}")
        return list(data.get("stopped") or [])

    result = run.pool.fan_out(roles, finish)
    for host, value in run.pool.by_host(result).items():
        what = " or ".join(roles[host])
        if isinstance(value, BaseException):
            reason = failure_reason(value)
            message = f"could not stop {what}" + (" or clean up" if clean else "")
            run.emit(Event("host", message, host, {"ok": False, "reason": reason}))
            continue
        names = [
            f"{Path(r['pid_file'] or '?').name} pid {r['pid']}" for r in value if r.get("stopped")
        ]
        message = f"stopped {', '.join(names)}" if names else f"no {what} running"
        data = {"ok": True, "stopped": value, "quiet": run.quiet}
        run.emit(Event("host", message, host, data))
    return result


def valid_tag(tag: str | None) -> str | None:
    """Return ``tag`` checked, or None for "every release"."""
    return validate_tag(tag) if tag else None


def clean(run: Run, hosts: Iterable[str], tag: str | None) -> GroupResult:
    """Remove the temp files of ``tag`` (or all idle ones) and any upload on ``hosts``."""
    s = run.s
    args = ["--temp-path", s.temp_path] + (["--tag", tag] if tag else [])
    command = f"test -x {quote(s.agent_python)} || exit 0; " + agent_command(s, "clean", *args)
    if tag:
        command += (
            f" && rm -rf -- {quote(s.tmp(f'upload-{tag}'))} {quote(s.tmp(f'upload-{tag}.tar'))}"
        )
    return run.pool.fan_out(
        hosts, lambda conn: shell(conn, command, "cleaning temp files", timeout=120)
    )


def start_seed(run: Run) -> int | None:
    """Start seeding the run's release on the seeder, detached; return its PID."""
    s = run.s
    assert s.seeder
    args: list[object] = [
        "--torrent", s.tmp(f"{s.tag}.torrent"), "--save-path", s.temp_path,
        "--bind", run.addresses[s.seeder], "--port", s.peer_port,
        "--status-file", s.tmp(f"seed-{s.tag}.status.json"), "--tag", s.tag,
        *run.allow_args(),
    ]  # fmt: skip
    args += rate_args(s, download=False)
    data = run_agent(
        run.conn(s.seeder), s, "daemon", "start",
        "--pid-file", s.tmp(f"seed-{s.tag}.pid"), "--log", s.tmp(f"seed-{s.tag}.log"),
        "--", "seed", *args, ok=(0, 3),
    )  # fmt: skip
    running = "already seeding" if data["exit"] == 3 else f"seeding (pid {data.get('pid')})"
    run.emit(Event("host", running, s.seeder, {"ok": True}))
    return data.get("pid")


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


#: a torrent up to this size travels inside the peer's start command (base64),
#: which saves a directory command and an SFTP session per peer; a larger one
#: (a release over about 600 MiB at 256 KiB pieces) is uploaded first. The
#: command stays well under Linux's 128 KiB limit on one argument.
INLINE_TORRENT_MAX = 48 * 1024


def place_torrent(run: Run, conn: Connection, torrent: Path) -> str:
    """Return the shell step that makes the directories and puts ``torrent`` in place.

    A large torrent is uploaded here (SFTP) and the step only makes the
    directories; a small one is written by the step itself, atomically.
    """
    s = run.s
    assert s.destination_path
    final = s.tmp(f"{s.tag}.torrent")
    dirs = f"mkdir -p -- {quote(s.temp_path)} {quote(s.destination_path)}"
    data = torrent.read_bytes()
    if len(data) > INLINE_TORRENT_MAX:
        shell(conn, f"mkdir -p -- {quote(s.temp_path)}", "making temp_path")
        conn.put(str(torrent), remote=final)
        return dirs
    # ".tmp-inline": a name the clean command knows as a temporary sibling
    tmp = quote(final + ".tmp-inline")
    encoded = quote(base64.b64encode(data).decode("ascii"))
    return f"{dirs} && printf %s {encoded} | base64 -d > {tmp} && mv -f -- {tmp} {quote(final)}"


def start_peer(run: Run, conn: Connection, torrent: Path, sha256: str) -> int | None:
    """Put the torrent on one peer and start its agent, detached; return its PID."""
    s = run.s
    assert s.destination_path and s.seeder
    host = run.pool.host_of(conn)
    before = place_torrent(run, conn, torrent)
    args: list[object] = [
        "--torrent", s.tmp(f"{s.tag}.torrent"), "--save-path", s.temp_path,
        "--bind", run.addresses[host], "--port", s.peer_port,
        "--status-file", s.tmp(f"peer-{s.tag}.status.json"),
        "--sha256", sha256, "--dest", s.destination_path, "--tag", s.tag,
        "--timeout", s.timeout, "--seed-after", s.seed_after,
        "--seeder", run.addresses[s.seeder], *run.allow_args(),
    ]  # fmt: skip
    args += rate_args(s, download=True)
    if host in s.peers and len(s.peers) > 1:
        # Each peer asks the seeder for its own slice first (host-side stripe_priorities).
        args += ["--stripe", f"{s.peers.index(host)}/{len(s.peers)}"]
    if s.force:
        args.append("--force")
    data = run_agent(
        conn, s, "daemon", "start",
        "--pid-file", s.tmp(f"peer-{s.tag}.pid"), "--log", s.tmp(f"peer-{s.tag}.log"),
        "--", "peer", *args, ok=(0, 3), before=before,
    )  # fmt: skip
    pid = data.get("pid")
    return int(pid) if isinstance(pid, int) else None
