"""``murder.status``: what runs and what is installed on every role host, read-only.

One command per host (``python -m fabmurder status``, or a note that the
agent is not installed), plus the tracker's ``/stats`` when fabmurder runs
the tracker. Each host also says whether its agent venv is still the one
setup installed (``venv``: ``ok``, or ``changed`` and the files).
Nothing is started, stopped or written.
"""

from __future__ import annotations

from typing import Any, Unpack

from fabmurder import install
from fabmurder.config import Settings, settings
from fabmurder.contract import parse_reply
from fabmurder.errors import MurderError
from fabmurder.options import Options
from fabmurder.plan import make_plan, read_token, urls
from fabmurder.remote import (
    POLL_TIMEOUT,
    ConnectionPool,
    agent_command,
    open_pool,
    quote,
    run_agent,
    shell,
)
from fabmurder.report import EventCallback


def tracker_stats(pool: ConnectionPool, s: Settings) -> dict[str, object]:
    """Return the running tracker's /stats, without starting or changing anything."""
    assert s.tracker
    plan = make_plan(pool, s, [s.tracker], require=[s.tracker])
    token = read_token(pool, s)
    if not token:
        return {"running": False}
    url = urls(s, plan.address(s.tracker), token, plan.deploy_token).stats
    return run_agent(pool.get(s.tracker), s, "stats", "--url", url)


def survey(pool: ConnectionPool, s: Settings) -> dict[str, dict[str, object]]:
    """Return the state of every role host over ``pool`` (see :func:`status`)."""
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
        f"{install.check_command(s)}; " + agent_command(s, "status", *args)
    )
    out: dict[str, dict[str, Any]] = {}
    result = pool.fan_out(roles, lambda conn: shell(conn, command, "status", timeout=POLL_TIMEOUT))
    for host, value in result.items():
        entry: dict[str, Any] = {"roles": roles[host]}
        if isinstance(value, BaseException):
            entry["error"] = result.failed[host]
        else:
            entry["status"] = parse_reply(value.stdout) or {}
            # the agent install as setup recorded it, checked by the host's sha256sum
            venv = install.parse_check(value.stdout)
            if venv is not None:
                entry["venv"] = venv
        out[host] = entry
    tracker = s.tracker if not s.tracker_url else None
    daemons = out.get(tracker or "", {}).get("status", {}).get("daemons") or {}
    if tracker and not (daemons.get("tracker") or {}).get("alive"):
        out["tracker"] = {"running": False}
    elif tracker:
        try:
            out["tracker"] = tracker_stats(pool, s)
        except MurderError as exc:
            out["tracker"] = {"error": str(exc)}
    return dict(out)


def status(
    c: Any, *, on_event: EventCallback | None = None, **options: Unpack[Options]
) -> dict[str, dict[str, object]]:
    """Return the state of every role host: daemons, status files and releases.

    :returns: host -> ``{"roles": [...], "status": <status JSON>}`` or
        ``{"roles": [...], "error": reason}``; under the key ``"tracker"``
        (when fabmurder runs it) the tracker's ``/stats``.
    """
    s = settings(c, **options)
    with open_pool(c, s) as pool:
        return survey(pool, s)
