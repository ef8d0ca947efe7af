"""Releases on the peers: ``releases/<tag>``, a ``current`` symlink, rollback and cleanup.

The layout, under ``destination_path`` on every peer, is Capistrano's::

    releases/<tag>/     one directory per release (landed by distribute)
    current -> releases/<tag>
    revisions.log       one line per publish, deploy and rollback

:func:`deploy` is the composite: :func:`distribute` (``distribute_files``
into ``destination_path/releases``), then :func:`publish`, then
:func:`cleanup`. Each stage is a plain function taking a ``Context``, so a
fabfile can call them one by one and put its own steps in between.

Release order: a release's age is when it landed, taken as the earlier of
its first line in ``revisions.log`` and its directory's modification time
(so a release that was never published still has an age, and publishing an
old release again does not make it new). Rollback goes to the newest
release older than the current one; cleanup keeps the ``keep_releases``
newest and the one ``current`` points to.

``current`` is switched with rename(2): a new symlink is made beside it and
renamed over it (``mv -T``), so readers always find a ``current``. Like the
rest of the function layer, nothing here prints; events go to ``on_event``.
"""

from __future__ import annotations

import getpass
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fabric import Connection

from fabmurder import pipeline
from fabmurder.config import Settings, murder_tree, settings
from fabmurder.errors import ConfigError, DeployError
from fabmurder.host.artifact import MARKER_SUFFIX
from fabmurder.remote import failure_reason
from fabmurder.report import DeployReport, Event, EventCallback
from fabmurder.roles import POLL_TIMEOUT, Run, open_run, quote, shell
from fabmurder.tags import validate_tag

RELEASES = "releases"
CURRENT = "current"
REVISIONS_LOG = "revisions.log"
#: how many releases cleanup keeps when ``murder.keep_releases`` is not set
KEEP_RELEASES = 5
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Layout:
    """Where the release layout lives under one ``destination_path``."""

    root: str

    @classmethod
    def of(cls, s: Settings) -> Layout:
        """Return the layout of ``s.destination_path``.

        :raises ConfigError: if it is unset, relative or ``/``.
        """
        dest = s.destination_path
        if not dest or not dest.startswith("/") or dest == "/":
            raise ConfigError(
                f"murder.destination_path must be an absolute path other than '/', got {dest!r}",
                key="destination_path",
            )
        return cls(dest)

    @property
    def releases(self) -> str:
        return f"{self.root}/{RELEASES}"

    @property
    def current(self) -> str:
        return f"{self.root}/{CURRENT}"

    @property
    def log(self) -> str:
        return f"{self.root}/{REVISIONS_LOG}"


@dataclass(frozen=True)
class Revision:
    """One line of ``revisions.log``: when, what, which tag, who, and what it replaced."""

    when: str
    action: str
    tag: str
    who: str
    previous: str | None = None

    def line(self) -> str:
        """Return the log line (no newline)."""
        tail = f" (was {self.previous})" if self.previous else ""
        return f"{self.when} {self.action} {self.tag} by {self.who}{tail}"

    @classmethod
    def parse(cls, line: str) -> Revision | None:
        """Return the revision a log line records, or None for a line that is not one."""
        words = line.split()
        if len(words) < 5 or words[3] != "by":
            return None
        try:
            datetime.strptime(words[0], _TIME_FORMAT)
            tag = validate_tag(words[2])
        except (ValueError, ConfigError):
            return None
        previous = None
        if len(words) >= 7 and words[5] == "(was" and words[6].endswith(")"):
            previous = words[6][:-1]
        return cls(words[0], words[1], tag, words[4], previous)

    @property
    def epoch(self) -> float:
        return datetime.strptime(self.when, _TIME_FORMAT).replace(tzinfo=UTC).timestamp()


@dataclass
class HostReleases:
    """The releases on one peer, oldest first, and the one ``current`` points to."""

    host: str
    releases: list[str] = field(default_factory=list)
    current: str | None = None
    #: what ``current`` points to when that is not one of ``releases``
    current_target: str | None = None
    revisions: list[Revision] = field(default_factory=list)

    def previous(self) -> str | None:
        """Return the newest release older than the current one, or None."""
        if self.current not in self.releases:
            return None
        index = self.releases.index(self.current)
        return self.releases[index - 1] if index > 0 else None

    def removable(self, keep: int) -> list[str]:
        """Return the releases cleanup removes: all but the ``keep`` newest and current."""
        old = self.releases[: max(0, len(self.releases) - keep)]
        return [tag for tag in old if tag != self.current]

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current or self.current_target,
            "releases": list(self.releases),
            "previous": self.previous(),
        }


@dataclass
class Deployed:
    """What :func:`deploy` did: the distribution report, the switch, the cleanup."""

    report: DeployReport
    #: host -> the release ``current`` pointed to before (None: there was none)
    published: dict[str, str | None]
    #: host -> releases removed by cleanup
    removed: dict[str, list[str]]


def who() -> str:
    """Return ``user@control-host`` for revisions.log (no whitespace)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    text = f"{user}@{socket.gethostname()}"
    return "".join("_" if ch.isspace() else ch for ch in text) or "unknown"


def now() -> str:
    """Return the current UTC time as revisions.log writes it."""
    return datetime.now(UTC).strftime(_TIME_FORMAT)


# -- commands (pure: they only build shell text) -----------------------------------------------


def inspect_command(lay: Layout) -> str:
    """Return the command printing a host's ``current``, releases and revisions.log."""
    d = quote(lay.root)
    return (
        f"d={d}; "
        'if [ -L "$d/current" ]; then printf "current\\t%s\\n" "$(readlink -- "$d/current")"; '
        'elif [ -e "$d/current" ]; then printf "current\\t(not a symlink)\\n"; fi; '
        'if [ -d "$d/releases" ]; then '
        "find \"$d/releases/\" -mindepth 1 -maxdepth 1 -type d -printf 'release\\t%T@\\t%f\\n'; "
        "fi; "
        'if [ -f "$d/revisions.log" ]; then sed "s/^/log\\t/" "$d/revisions.log"; fi'
    )


def switch_command(lay: Layout, tag: str, record: Revision, token: str | None = None) -> str:
    """Return the command that points ``current`` at ``releases/<tag>`` and logs it.

    A new symlink is made beside ``current`` and renamed over it (rename(2)
    via ``mv -T``), so there is never a moment without ``current``.
    """
    validate_tag(tag)
    tmp = f"{CURRENT}.tmp-{token or secrets.token_hex(6)}"
    target = quote(f"{RELEASES}/{tag}")
    return (
        f"cd -- {quote(lay.root)} && "
        f"test -d {target} && ! test -L {target} && "
        f"ln -s -- {target} {tmp} && "
        f"{{ mv -T -- {tmp} {CURRENT} || {{ rm -f -- {tmp}; exit 1; }}; }} && "
        f"printf '%s\\n' {quote(record.line())} >> {REVISIONS_LOG}"
    )


def remove_command(lay: Layout, tags: Iterable[str], token: str | None = None) -> str:
    """Return the command that removes ``releases/<tag>`` for each tag, printing each removed.

    It works inside ``releases`` only, skips the release ``current``
    points to at that moment, and moves a release aside before deleting it
    so that a half-deleted tree never looks like a release.
    """
    names = " ".join(quote(validate_tag(tag)) for tag in tags)
    suffix = f"removing-{token or secrets.token_hex(6)}"
    return (
        f"cd -- {quote(lay.releases)} || exit 0; "
        f'for t in {names}; do [ "$(readlink -- ../{CURRENT} 2>/dev/null)" = "{RELEASES}/$t" ]'
        ' && continue; { test -d "$t" && ! test -L "$t"; } || continue; '
        f'mv -T -- "$t" ".$t.{suffix}" && rm -rf -- ".$t.{suffix}" ".$t{MARKER_SUFFIX}" '
        '&& printf "%s\\n" "$t"; done; '
        # a killed earlier cleanup leaves hidden trees behind: finish them
        'for x in .*.removing-*; do [ -d "$x" ] && rm -rf -- "$x"; done; exit 0'
    )


def parse_inspect(host: str, lay: Layout, stdout: str) -> HostReleases:
    """Return a host's releases, oldest first, from :func:`inspect_command`'s output."""
    state = HostReleases(host)
    mtimes: dict[str, float] = {}
    for line in stdout.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "current":
            state.current_target = rest
        elif kind == "release":
            stamp, _, name = rest.partition("\t")
            if name.startswith(".") or not _is_tag(name):
                continue
            mtimes[name] = float(stamp)
        elif kind == "log":
            revision = Revision.parse(rest)
            if revision is not None:
                state.revisions.append(revision)
    # Both the first log line and the directory's mtime come at or after the
    # landing; the earlier of the two survives a late publish of an old
    # release (a new log line) and a write into a release (a new mtime).
    landed = dict(mtimes)
    for revision in state.revisions:
        if revision.tag in landed:
            landed[revision.tag] = min(landed[revision.tag], revision.epoch)
    state.releases = sorted(mtimes, key=lambda tag: (landed[tag], tag))
    target = state.current_target
    if target is not None:
        for prefix in (f"{RELEASES}/", f"{lay.releases}/"):
            name = target.rstrip("/").removeprefix(prefix)
            if target.startswith(prefix) and name in mtimes:
                state.current, state.current_target = name, None
                break
    return state


def _is_tag(name: str) -> bool:
    try:
        validate_tag(name)
    except ConfigError:
        return False
    return True


# -- the function layer ---------------------------------------------------------------------------


def keep_releases(c: Any, value: Any = None) -> int:
    """Return how many releases cleanup keeps: ``value``, else ``murder.keep_releases``, else 5.

    :raises ConfigError: unless it is a whole number of at least 1.
    """
    if value is None:
        value = murder_tree(c).get("keep_releases")
    if value in (None, ""):
        return KEEP_RELEASES
    try:
        keep = int(value)
    except (TypeError, ValueError):
        keep = 0
    if isinstance(value, bool) or keep < 1 or str(keep) != str(value).strip():
        raise ConfigError(
            f"murder.keep_releases must be a whole number of at least 1, not {value!r}",
            key="keep_releases",
        )
    return keep


def _open(c: Any, on_event: EventCallback | None, overrides: dict[str, Any]) -> tuple[Run, Layout]:
    overrides.pop("keep_releases", None)
    run = open_run(c, on_event, **overrides)
    run.s.require("peers", "destination_path")
    return run, Layout.of(run.s)


def _hosts(run: Run, hosts: Iterable[str] | None) -> list[str]:
    return list(run.s.peers) if hosts is None else list(dict.fromkeys(hosts))


def _inspect(run: Run, lay: Layout, hosts: list[str]) -> dict[str, HostReleases | BaseException]:
    command = inspect_command(lay)

    def look(conn: Connection) -> HostReleases:
        host = run.pool.host_of(conn)
        out = shell(conn, command, "reading the releases", timeout=POLL_TIMEOUT)
        return parse_inspect(host, lay, out.stdout)

    return run.pool.by_host(run.pool.fan_out(hosts, look))


def _states(run: Run, lay: Layout, hosts: list[str]) -> dict[str, HostReleases]:
    """Inspect ``hosts``; raise DeployError naming every host that did not answer."""
    found = _inspect(run, lay, hosts)
    failed = {h: failure_reason(v) for h, v in found.items() if isinstance(v, BaseException)}
    if failed:
        raise DeployError(f"cannot read the releases on {len(failed)} host(s)", failed)
    return {h: v for h, v in found.items() if isinstance(v, HostReleases)}


def releases(
    c: Any, *, hosts: Iterable[str] | None = None, **overrides: Any
) -> dict[str, HostReleases | BaseException]:
    """Return each peer's releases (oldest first) and current release, or why it failed."""
    run, lay = _open(c, None, overrides)
    with run.pool:
        return _inspect(run, lay, _hosts(run, hosts))


def _switch(
    run: Run, lay: Layout, targets: dict[str, str], states: dict[str, HostReleases], action: str
) -> dict[str, str | None]:
    """Point ``current`` at ``targets[host]`` on each host; return host -> previous release."""
    author, when = who(), now()

    def switch(conn: Connection) -> str | None:
        host = run.pool.host_of(conn)
        before = states[host]
        previous = before.current or before.current_target
        record = Revision(when, action, targets[host], author, before.current)
        shell(conn, switch_command(lay, targets[host], record), f"switching current ({action})")
        return previous

    result = run.pool.by_host(run.pool.fan_out(targets, switch))
    failed: dict[str, str] = {}
    for host, value in result.items():
        if isinstance(value, BaseException):
            failed[host] = failure_reason(value)
            run.emit(Event("host", "failed", host, {"ok": False, "reason": failed[host]}))
        else:
            was = f" (was {value})" if value else ""
            run.emit(Event("host", f"current -> {targets[host]}{was}", host, {"ok": True}))
    if failed:
        raise DeployError(f"{action} failed on {len(failed)} host(s)", failed)
    return {h: v for h, v in result.items() if not isinstance(v, BaseException)}


def publish(
    c: Any,
    tag: str | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    action: str = "publish",
    **overrides: Any,
) -> dict[str, str | None]:
    """Point ``current`` at ``releases/<tag>`` on every peer, atomically.

    Nothing is switched anywhere unless every host holds the release. The
    old release stays on disk; ``revisions.log`` gets one line per host.

    :param hosts: the peers to switch (default: ``murder.peers``).
    :returns: host -> the release ``current`` pointed to before, or None.
    :raises ConfigError: when no tag is given (flag or ``murder.tag``).
    :raises DeployError: naming each host that lacks the release or failed.
    """
    given = tag or overrides.pop("tag", None) or murder_tree(c).get("tag")
    if not given:
        raise ConfigError("publish needs a release tag: give --tag or set murder.tag", key="tag")
    tag = validate_tag(str(given))
    run, lay = _open(c, on_event, {**overrides, "tag": tag})
    with run.pool:
        return _publish(run, lay, tag, _hosts(run, hosts), action)


def _publish(
    run: Run, lay: Layout, tag: str, hosts: list[str], action: str
) -> dict[str, str | None]:
    states = _states(run, lay, hosts)
    missing = {
        h: f"release {tag!r} is not in {lay.releases}"
        for h, state in states.items()
        if tag not in state.releases
    }
    if missing:
        raise DeployError(
            f"release {tag!r} is missing on {len(missing)} host(s); nothing was switched",
            missing,
        )
    run.phase(f"pointing current at {tag} on {len(states)} host(s)")
    return _switch(run, lay, dict.fromkeys(states, tag), states, action)


def rollback(
    c: Any,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **overrides: Any,
) -> dict[str, str | None]:
    """Point ``current`` back at the release before it on every peer.

    "Before" is by release age (see the module docstring). It refuses, and
    switches nothing, when a host has no earlier release or when the hosts
    would not all land on the same release.

    :returns: host -> the release ``current`` pointed to before.
    :raises DeployError: naming each host that cannot roll back.
    """
    run, lay = _open(c, on_event, overrides)
    with run.pool:
        states = _states(run, lay, _hosts(run, hosts))
        problems: dict[str, str] = {}
        targets: dict[str, str] = {}
        for host, state in states.items():
            previous = state.previous()
            if state.current is None:
                shown = state.current_target or "nothing"
                problems[host] = f"current points to {shown}, not a release in {lay.releases}"
            elif previous is None:
                problems[host] = f"no release before {state.current!r} to roll back to"
            else:
                targets[host] = previous
        if problems:
            raise DeployError(f"cannot roll back on {len(problems)} host(s)", problems)
        if len(set(targets.values())) > 1:
            raise DeployError(
                "the hosts would roll back to different releases; choose one with publish --tag",
                {h: f"would roll back to {t!r}" for h, t in targets.items()},
            )
        run.phase(f"rolling back to {next(iter(targets.values()), '?')}")
        return _switch(run, lay, targets, states, "rollback")


def cleanup(
    c: Any,
    keep: int | None = None,
    *,
    hosts: Iterable[str] | None = None,
    on_event: EventCallback | None = None,
    **overrides: Any,
) -> dict[str, list[str]]:
    """Remove old releases on every peer, keeping the newest ``keep`` and the current one.

    Only directories directly under ``destination_path/releases`` are ever
    removed.

    :param keep: default ``murder.keep_releases`` (5).
    :returns: host -> the releases removed there.
    :raises DeployError: naming each host where cleanup failed.
    """
    count = keep_releases(c, keep if keep is not None else overrides.get("keep_releases"))
    run, lay = _open(c, on_event, overrides)
    with run.pool:
        return _cleanup(run, lay, count, _hosts(run, hosts))


def _cleanup(run: Run, lay: Layout, count: int, hosts: list[str]) -> dict[str, list[str]]:
    states = _states(run, lay, hosts)

    def remove(conn: Connection) -> list[str]:
        doomed = states[run.pool.host_of(conn)].removable(count)
        if not doomed:
            return []
        out = shell(conn, remove_command(lay, doomed), "removing old releases", timeout=600)
        return [line for line in out.stdout.splitlines() if line.strip()]

    result = run.pool.by_host(run.pool.fan_out(states, remove))
    failed: dict[str, str] = {}
    removed: dict[str, list[str]] = {}
    for host, value in result.items():
        if isinstance(value, BaseException):
            failed[host] = failure_reason(value)
            run.emit(Event("host", "failed", host, {"ok": False, "reason": failed[host]}))
            continue
        removed[host] = value
        message = f"removed {', '.join(value)}" if value else "no old release to remove"
        run.emit(Event("host", message, host, {"ok": True, "removed": value, "quiet": not value}))
    if failed:
        raise DeployError(f"cleanup failed on {len(failed)} host(s)", failed)
    return removed


def distribute(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> DeployReport:
    """Ship a release into ``destination_path/releases/<tag>`` on every peer.

    This is :func:`fabmurder.pipeline.distribute_files` aimed at the
    release layout; it does not touch ``current``.
    """
    overrides.pop("keep_releases", None)
    s = settings(c, **overrides)
    s.require("destination_path")
    lay = Layout.of(s)
    overrides.update(tag=s.tag, destination_path=lay.releases)
    return pipeline.distribute_files(c, on_event=on_event, **overrides)


def deploy(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> Deployed:
    """Distribute a release, publish it, and clean up old releases.

    :func:`publish` and :func:`cleanup` run on the peers that got the
    release (those that failed, within ``max_failed_peers``, keep their
    ``current``); ``revisions.log`` records the switch as ``deploy``.

    :raises DeployError: from any stage; the stages before it stay done.
    """
    keep = keep_releases(c, overrides.pop("keep_releases", None))
    s = settings(c, **overrides)
    s.require("destination_path")
    Layout.of(s)
    overrides["tag"] = s.tag
    report = distribute(c, on_event=on_event, **overrides)
    published: dict[str, str | None] = {}
    removed: dict[str, list[str]] = {}
    if report.succeeded:
        run, lay = _open(c, on_event, overrides)
        with run.pool:
            published = _publish(run, lay, s.tag, report.succeeded, "deploy")
            removed = _cleanup(run, lay, keep, report.succeeded)
    return Deployed(report, published, removed)


def status(c: Any, *, on_event: EventCallback | None = None, **overrides: Any) -> dict[str, Any]:
    """Return :func:`fabmurder.pipeline.status` with each peer's release layout added.

    A peer's entry gains ``"layout"``: ``{"current", "releases",
    "previous"}`` (releases oldest first) when ``destination_path`` is set.
    """
    overrides.pop("keep_releases", None)
    state = pipeline.status(c, on_event=on_event, **overrides)
    run = open_run(c, on_event, **overrides)
    if not run.s.destination_path or not run.s.peers:
        return state
    lay = Layout.of(run.s)
    reachable = [h for h in run.s.peers if "error" not in state.get(h, {})]
    with run.pool:
        found = _inspect(run, lay, reachable)
    for host, value in found.items():
        entry = state.setdefault(host, {"roles": ["peer"]})
        if isinstance(value, BaseException):
            entry["layout"] = {"error": failure_reason(value)}
        else:
            entry["layout"] = value.as_dict()
    return state
