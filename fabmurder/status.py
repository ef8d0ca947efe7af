"""``murder.status``: what runs and what is installed on every role host, read-only.

One command per host (``python -m fabmurder status``, or a note that the
agent is not installed), plus the tracker's ``/stats`` when fabmurder runs
the tracker. Nothing is started, stopped or written.
"""

from __future__ import annotations

from typing import Any

from fabmurder.errors import MurderError
from fabmurder.remote import QUIET, agent_command, failure_reason, parse_json, run_agent
from fabmurder.report import EventCallback
from fabmurder.roles import POLL_TIMEOUT, Run, open_run, probe, quote, require_reachable, shell


def tracker_stats(run: Run, tracker: str) -> dict[str, Any]:
    """Return the running tracker's /stats, without starting or changing anything."""
    s = run.s
    require_reachable(run, probe(run, [tracker]), tracker)
    conn = run.conn(tracker)
    token = conn.run(f"cat -- {quote(s.tmp('tracker.token'))} 2>/dev/null", **QUIET).stdout.strip()
    if not token:
        return {"running": False}
    addr = run.addresses[tracker]
    host = f"[{addr}]" if ":" in addr else addr
    url = f"http://{host}:{s.tracker_port}/stats/{token}"
    return run_agent(conn, s, "stats", "--url", url)


def status(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> dict[str, Any]:
    """Return the state of every role host: daemons, status files and releases.

    :returns: host -> ``{"roles": [...], "status": <status JSON>}`` or
        ``{"roles": [...], "error": reason}``; under the key ``"tracker"``
        (when fabmurder runs it) the tracker's ``/stats``.
    """
    run = open_run(c, on_event, **overrides)
    s = run.s
    roles: dict[str, list[str]] = {}
    for role, hosts in (
        ("tracker", [s.tracker] if not s.tracker_url else []),
        ("seeder", [s.seeder]),
        ("peer", list(s.peers)),
    ):
        for host in hosts:
            if host:
                roles.setdefault(host, []).append(role)
    args = ["--temp-path", s.temp_path] + (
        ["--dest", s.destination_path] if s.destination_path else []
    )
    command = (
        f"test -x {quote(s.agent_python)} || {{ echo '{{\"agent\": false}}'; exit 0; }}; "
        + agent_command(s, "status", *args)
    )
    out: dict[str, Any] = {}
    with run.pool:
        result = run.pool.by_host(
            run.pool.fan_out(
                roles, lambda conn: shell(conn, command, "status", timeout=POLL_TIMEOUT)
            )
        )
        for host, value in result.items():
            entry: dict[str, Any] = {"roles": roles[host]}
            if isinstance(value, BaseException):
                entry["error"] = failure_reason(value)
            else:
                entry["status"] = parse_json(value.stdout) or {}
            out[host] = entry
        tracker = s.tracker if not s.tracker_url else None
        daemons = out.get(tracker or "", {}).get("status", {}).get("daemons") or {}
        if tracker and not (daemons.get("tracker") or {}).get("alive"):
            out["tracker"] = {"running": False}
        elif tracker:
            try:
                out["tracker"] = tracker_stats(run, tracker)
            except MurderError as exc:
                out["tracker"] = {"error": str(exc)}
    return out
