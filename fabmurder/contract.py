"""The contract between the control side and the hosts: file names, records, one parser.

Imported on both sides, as :mod:`fabmurder.tags` is, so it imports neither
Fabric nor Invoke (nor, at run time, ``typing``: host commands start lean).

Every file a role leaves under ``temp_path`` is named here, and
:func:`classify` recognises exactly these names again (``clean`` removes
nothing else). The records that cross SSH (what ``create`` prints, a status
file, ``finish``'s and ``poll``'s replies) are typed below; the host side
writes them with :func:`json.dumps` and the control side reads them with
:func:`parse_reply` and :func:`check_status`, the same checks the host side
applies to a status file (:func:`parse_poll`, :func:`parse_finish`).
"""

from __future__ import annotations

import json

from fabmurder.errors import MurderError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NotRequired, TypedDict

    class CreateInfo(TypedDict):
        """What ``create`` prints: the release's tarball and torrent."""

        tag: str
        tarball: str
        torrent: str
        sha256: str
        size: int
        info_hash: str
        piece_size: int
        files: int

    class StatusRecord(TypedDict):
        """A seed or peer agent's status file (see :data:`STATUS_FIELDS`)."""

        role: str
        tag: str
        info_hash: str
        pid: int
        state: str
        installed: bool
        error: str | None
        total: int
        done: int
        uploaded: int
        from_seeder: int
        from_peers: int
        hash_failures: int
        peers: int
        started_at: float
        downloaded_at: float | None
        installed_at: float | None
        updated_at: float
        cpu_seconds: NotRequired[float]

    class StopRecord(TypedDict):
        """One daemon ``finish`` (or ``daemon stop``) stopped, or found gone."""

        stopped: bool
        pid: int | None
        reason: str
        pid_file: str

    class FinalStatus(TypedDict):
        """An agent's status file as ``finish`` read it, after the stop and before the clean."""

        status: StatusRecord | None
        error: str | None

    class FinishReply(TypedDict):
        """What ``finish`` prints; ``statuses`` (role -> its agent's last status) with ``--tag``."""

        stopped: list[StopRecord]
        clean: dict[str, Any] | None
        statuses: NotRequired[dict[str, FinalStatus]]
        error: NotRequired[str]

    class PollReply(TypedDict):
        """What ``poll`` prints: an agent's status (None while unreadable) and its liveness."""

        status: StatusRecord | None
        alive: bool
        error: str | None

    class DigestReply(TypedDict):
        """What ``digest`` prints about one file."""

        path: str
        sha256: str
        size: int


# -- file names under temp_path ------------------------------------------------------------

#: the tracker's files (one tracker per host)
TRACKER_PID = "tracker.pid"
TRACKER_LOG = "tracker.log"
ALLOW_LIST = "tracker.allow"
#: the lock the allow-list edits take (``.<file>.lock``)
ALLOW_LOCK = f".{ALLOW_LIST}.lock"
#: the tracker's URL token: kept across runs, so it is not a temp file
TRACKER_TOKEN = "tracker.token"
#: the suffix of a temporary sibling that is renamed over its file
TEMP_INFIX = ".tmp-"
#: the roles that run an agent per release, and their files' suffixes
AGENT_ROLES = ("seed", "peer")
_AGENT_SUFFIXES = (".pid", ".log", ".status.json", ".allow")
_RELEASE_SUFFIXES = (".tar", ".torrent", ".tree")
#: beside ``destination_path/<tag>``: the SHA-256 of the artifact installed there
MARKER_SUFFIX = ".sha256"
#: beside ``destination_path/<tag>``: a tree release's manifest, for the next release to reuse
MANIFEST_SUFFIX = ".manifest"


def tarball(tag: str) -> str:
    """Return the release tarball's name (``create`` writes it, ``peer`` downloads it)."""
    return f"{tag}.tar"


def torrent(tag: str) -> str:
    """Return the release torrent's name."""
    return f"{tag}.torrent"


def pid_file(role: str, tag: str | None = None) -> str:
    """Return a daemon's PID file name: ``tracker.pid`` or ``<role>-<tag>.pid``."""
    return TRACKER_PID if role == "tracker" else f"{role}-{tag}.pid"


def log_file(role: str, tag: str | None = None) -> str:
    """Return a daemon's log file name."""
    return TRACKER_LOG if role == "tracker" else f"{role}-{tag}.log"


def allow_file(role: str, tag: str) -> str:
    """Return the name of an agent's allow-list (one address or network per line)."""
    return f"{role}-{tag}.allow"


#: ``setup``'s wheel relay: its PID file and log (stopped and removed when setup ends)
RELAY_PID = "setup-relay.pid"
RELAY_LOG = "setup-relay.log"


def status_file(role: str, tag: str) -> str:
    """Return a seed or peer agent's status file name."""
    return f"{role}-{tag}.status.json"


def upload(tag: str) -> tuple[str, str]:
    """Return the names of a ``local_path`` upload: the directory and its archive."""
    return f"upload-{tag}", f"upload-{tag}.tar"


def marker(tag: str) -> str:
    """Return the name of the marker beside ``destination_path/<tag>``."""
    return f".{tag}{MARKER_SUFFIX}"


def manifest_record(tag: str) -> str:
    """Return the name of the manifest kept beside a tree release ``destination_path/<tag>``."""
    return f".{tag}{MANIFEST_SUFFIX}"


def tree_link(tag: str) -> str:
    """Return the name of the seeder's symlink to a tree release (``create --layout tree``)."""
    return f"{tag}.tree"


#: the longest id an agent reports progress under
MAX_REPORT_ID = 64


def valid_report_id(rid: str) -> bool:
    """Tell whether ``rid`` may name a reporter: 1-64 ASCII letters, digits or ``-``."""
    return 0 < len(rid) <= MAX_REPORT_ID and rid.isascii() and rid.replace("-", "").isalnum()


def classify(name: str) -> tuple[str, str | None] | None:
    """Return ``(kind, tag)`` for a name this module gives a temp file, else None.

    ``kind`` is ``"release"`` (tarball, torrent), ``"agent"`` (a seed or peer
    agent's PID file, log or status file) or ``"tracker"``; a temporary
    sibling (``<name>.tmp-<letters>``) is classified as its file.
    """
    if name == ALLOW_LOCK:
        return "tracker", None
    base, infix, token = name.rpartition(TEMP_INFIX)
    if not (infix and token and token.isascii() and token.replace("_", "a").isalnum()):
        base = name
    if base in (TRACKER_PID, TRACKER_LOG, ALLOW_LIST):
        return "tracker", None
    for role in AGENT_ROLES:
        for suffix in _AGENT_SUFFIXES:
            prefix = f"{role}-"
            if base.startswith(prefix) and base.endswith(suffix):
                tag = base[len(prefix) : -len(suffix)]
                if tag:
                    return "agent", tag
    for suffix in _RELEASE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return "release", base[: -len(suffix)]
    return None


# -- records -------------------------------------------------------------------------------

STATES = (
    "starting",
    "checking",
    "downloading",
    "verifying",
    "extracting",
    "seeding",
    "failed",
    "stopped",
)
#: states after which an agent changes no more
FINAL_STATES = ("failed", "stopped")
#: the byte counters of a status record that a progress report carries (host/reporter.py
#: sends them, tracker/progress.py parses them)
REPORT_COUNTERS = ("done", "total", "from_seeder", "from_peers", "uploaded")
STATUS_FIELDS: dict[str, type | tuple[type, ...]] = {
    "role": str,
    "tag": str,
    "info_hash": str,
    "pid": int,
    "state": str,
    "installed": bool,
    "error": (str, type(None)),
    "total": int,
    "done": int,
    "uploaded": int,
    "from_seeder": int,
    "from_peers": int,
    "hash_failures": int,
    "peers": int,
    "started_at": (int, float),
    "downloaded_at": (int, float, type(None)),
    "installed_at": (int, float, type(None)),
    "updated_at": (int, float),
}
_COUNTS = ("total", "done", "uploaded", "from_seeder", "from_peers", "hash_failures", "peers")


class StatusError(MurderError):
    """A status file is missing, malformed or not a fabmurder status."""


def check_status(obj: object) -> StatusRecord:
    """Return ``obj`` if it is a valid status record.

    :raises StatusError: if it is not a JSON object with every field of the right type.
    """
    if not isinstance(obj, dict):
        raise StatusError("status file is not a JSON object")
    for key, kind in STATUS_FIELDS.items():
        if key not in obj:
            raise StatusError(f"status file lacks {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise StatusError(f"status field {key!r} has the wrong type")
    if obj["role"] not in AGENT_ROLES:
        raise StatusError(f"status role {obj['role']!r} is unknown")
    if obj["state"] not in STATES:
        raise StatusError(f"status state {obj['state']!r} is unknown")
    for key in _COUNTS:
        if obj[key] < 0:
            raise StatusError(f"status field {key!r} is negative")
    cpu = obj.get("cpu_seconds")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int | float)):
        raise StatusError("status field 'cpu_seconds' has the wrong type")
    return obj  # type: ignore[return-value]


def parse_status(text: str | bytes) -> StatusRecord:
    """Parse and validate the text of a status file.

    :raises StatusError: if it is not a JSON object with every field of the right type.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(f"status file is not JSON: {exc}") from exc
    return check_status(obj)


def parse_reply(stdout: str) -> dict[str, Any] | None:
    """Return the JSON object a host command printed (its last JSON line), or None."""
    text = stdout.strip()
    candidates = [text, *reversed(text.splitlines())] if text else []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_poll(stdout: str) -> PollReply:
    """Return ``poll``'s reply, its status checked as a status file is.

    :raises StatusError: when the reply is missing or malformed.
    """
    reply = parse_reply(stdout)
    if reply is None or not isinstance(reply.get("alive"), bool):
        raise StatusError(f"poll printed no reply: {stdout.strip()[-200:]!r}")
    status = reply.get("status")
    error = reply.get("error")
    return {
        "status": None if status is None else check_status(status),
        "alive": reply["alive"],
        "error": error if isinstance(error, str) else None,
    }


def parse_finish(stdout: str) -> FinishReply:
    """Return ``finish``'s reply, each agent status in it checked as a status file is.

    Empty output is the reply of a host without the agent (``test -x ... ||
    exit 0``): nothing was stopped there, and no status was read.

    :raises StatusError: when the reply is garbled: no JSON object, stop
        records that are not a list of objects, or a status that is not one.
    """
    reply = parse_reply(stdout)
    if reply is None:
        if stdout.strip():
            raise StatusError(f"finish printed no reply: {stdout.strip()[-200:]!r}")
        return {"stopped": [], "clean": None}
    stopped, clean = reply.get("stopped"), reply.get("clean")
    if not isinstance(stopped, list) or not all(isinstance(r, dict) for r in stopped):
        raise StatusError("finish printed no list of stop records")
    out: FinishReply = {"stopped": stopped, "clean": clean if isinstance(clean, dict) else None}
    if isinstance(reply.get("error"), str):
        out["error"] = reply["error"]
    statuses = reply.get("statuses")
    if statuses is None:
        return out
    if not isinstance(statuses, dict):
        raise StatusError("finish printed statuses that are not an object")
    out["statuses"] = {}
    for role, final in statuses.items():
        if role not in AGENT_ROLES or not isinstance(final, dict):
            raise StatusError(f"finish printed a status of {str(role)[:40]!r} that is not one")
        status, error = final.get("status"), final.get("error")
        record = None if status is None else check_status(status)
        if record is not None and record["role"] != role:
            raise StatusError(f"finish printed a {record['role']} status as the {role}'s")
        why = error if isinstance(error, str) else None
        out["statuses"][role] = {"status": record, "error": why}
    return out
