"""The tracker's control: starting fabmurder's tracker, and registering each torrent with it.

fabmurder's own tracker serves only URLs that carry a secret token (the
plan resolves it, :mod:`fabmurder.plan`); each run's torrent announces
under a deploy token of its own, registered with the info-hash in the
tracker's allow-list and removed again at the end of the run. An external
tracker (``tracker_url``) gets ``tracker_register``, run on the
``tracker`` host, when set.
"""

from __future__ import annotations

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.feed import SILENCE
from fabmurder.remote import ConnectionPool, agent_command, quote, run_agent, shell
from fabmurder.report import Event, EventCallback


def start(pool: ConnectionPool, s: Settings, address: str, token: str, emit: EventCallback) -> str:
    """Start fabmurder's tracker on the tracker host, detached; say whether it already ran.

    The plan's token goes to the token file first (on stdin, in the same
    round trip), and the tracker reads it from there: no command line
    that ``ps`` shows ever holds it.
    """
    assert s.tracker
    token_file = s.tmp(contract.TRACKER_TOKEN)
    keep = agent_command(s, "token", "--file", token_file, "--stdin")
    data = run_agent(
        pool.get(s.tracker), s, "daemon", "start",
        "--pid-file", s.tmp(contract.TRACKER_PID), "--log", s.tmp(contract.TRACKER_LOG), "--",
        "tracker", "--bind", address, "--port", s.tracker_port,
        "--allow-file", s.tmp(contract.ALLOW_LIST), "--token-file", token_file,
        # a peer whose reports stop is news to the watch after this long
        "--report-silence", SILENCE,
        ok=(0, 3), before=keep, stdin=token,
    )  # fmt: skip
    state = "already running" if data["exit"] == 3 else f"started (pid {data.get('pid')})"
    emit(Event("host", f"tracker {state}", s.tracker, {"ok": True}))
    return state


def register(pool: ConnectionPool, s: Settings, info_hash: str, deploy_token: str | None) -> None:
    """Allow a torrent on the tracker, under ``deploy_token`` when given.

    fabmurder's own tracker gets it in its allow-list file. An external
    tracker gets ``tracker_register``, a shell command run on the
    ``tracker`` host with ``{info_hash}`` replaced, when one is set.
    """
    if s.tracker_url:
        if s.tracker and s.tracker_register:
            command = s.tracker_register.replace("{info_hash}", quote(info_hash))
            shell(pool.get(s.tracker), command, "registering the torrent with the tracker")
        return
    if s.tracker:
        token = ["--token", deploy_token] if deploy_token else []
        args = ("allow", "--file", s.tmp(contract.ALLOW_LIST), "--add", info_hash, *token)
        run_agent(pool.get(s.tracker), s, *args)


def deregister(pool: ConnectionPool, s: Settings, info_hash: str) -> None:
    """Remove a torrent from fabmurder's tracker's allow-list (an external one keeps it)."""
    if s.tracker and not s.tracker_url:
        args = ("allow", "--file", s.tmp(contract.ALLOW_LIST), "--remove", info_hash)
        run_agent(pool.get(s.tracker), s, *args)
