"""The release layout on a peer, as shell commands and their parsing.

Under ``destination_path``, Capistrano's layout::

    releases/<tag>/     one directory per release (landed by distribute)
    current -> releases/<tag>
    revisions.log       one line per publish, deploy and rollback

Everything here is pure: :class:`Layout` names the paths, the ``*_command``
functions build shell text (every word quoted), :func:`parse_inspect`
reads a host's answer back. :mod:`fabmurder.releases` runs them.
"""

from __future__ import annotations

import getpass
import secrets
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fabmurder.contract import MARKER_SUFFIX
from fabmurder.errors import ConfigError
from fabmurder.tags import validate_tag

TYPE_CHECKING = False
if TYPE_CHECKING:
    from fabmurder.config import Settings

RELEASES = "releases"
CURRENT = "current"
REVISIONS_LOG = "revisions.log"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
quote = shlex.quote


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
    """Return the command that points ``current`` at ``releases/<tag>``, logs it, and lists.

    A new symlink is made beside ``current`` and renamed over it (rename(2)
    via ``mv -T``), so there is never a moment without ``current``. After a
    successful switch it prints the host's releases as
    :func:`inspect_command` does (read with :func:`parse_inspect`), so the
    cleanup after a deploy needs no read of its own; the listing never
    changes the command's exit status, which is the switch's.
    """
    validate_tag(tag)
    tmp = f"{CURRENT}.tmp-{token or secrets.token_hex(6)}"
    target = quote(f"{RELEASES}/{tag}")
    return (
        f"cd -- {quote(lay.root)} && "
        f"test -d {target} && ! test -L {target} && "
        f"ln -s -- {target} {tmp} && "
        f"{{ mv -T -- {tmp} {CURRENT} || {{ rm -f -- {tmp}; exit 1; }}; }} && "
        f"printf '%s\\n' {quote(record.line())} >> {REVISIONS_LOG} && "
        f"{{ {inspect_command(lay)}; true; }}"
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


def latest(found: dict[str, HostReleases]) -> str | None:
    """Return the release the newest switch went to, among the hosts' current releases.

    That is the release a rollback undoes: after a partial deploy some hosts
    are on it and the others still on what they had.
    """

    def when(state: HostReleases) -> tuple[float, int]:
        assert state.current is not None
        switched = [r.epoch for r in state.revisions if r.tag == state.current]
        return (max(switched, default=float("-inf")), state.releases.index(state.current))

    on_release = [state for state in found.values() if state.current is not None]
    return max(on_release, key=when).current if on_release else None


def rollback_targets(
    found: dict[str, HostReleases], lay: Layout, to: str | None = None
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Return where a rollback moves each host: (targets, problems, staying).

    With ``to``, every host goes to ``to`` (a problem where it is missing).
    Otherwise each host on the :func:`latest` release goes to the release
    before it there; ``staying`` names the hosts on another release, and why
    they stay.
    """
    targets: dict[str, str] = {}
    problems: dict[str, str] = {}
    staying: dict[str, str] = {}
    undone = None if to else latest(found)
    for host, state in found.items():
        if to is not None:
            if to not in state.releases:
                problems[host] = f"release {to!r} is not in {lay.releases}"
            elif state.current == to:
                staying[host] = f"already on {to}"
            else:
                targets[host] = to
        elif state.current is None:
            shown = state.current_target or "nothing"
            problems[host] = f"current points to {shown}, not a release in {lay.releases}"
        elif state.current != undone:
            staying[host] = f"stays on {state.current} (never switched to {undone})"
        elif (previous := state.previous()) is None:
            problems[host] = f"no release before {state.current!r} to roll back to"
        else:
            targets[host] = previous
    return targets, problems, staying
