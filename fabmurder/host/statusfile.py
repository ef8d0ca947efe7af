"""The agent's status file: what it holds, how it is written, and how it is read back.

The seed and peer agents rewrite the file atomically (temp file + rename);
the control side, ``status`` and the tests read it back with
:func:`read_status`, which trusts nothing in it.
"""

from __future__ import annotations

import json

from fabmurder.errors import MurderError
from fabmurder.host.atomic import replace_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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


class StatusError(MurderError):
    """A status file is missing, malformed or not a fabmurder status."""


def parse_status(text: str | bytes) -> dict[str, Any]:
    """Parse and validate the text of a status file.

    :raises StatusError: if it is not a JSON object with every field of the right type.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(f"status file is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise StatusError("status file is not a JSON object")
    for key, kind in STATUS_FIELDS.items():
        if key not in obj:
            raise StatusError(f"status file lacks {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise StatusError(f"status field {key!r} has the wrong type")
    if obj["role"] not in ("seed", "peer"):
        raise StatusError(f"status role {obj['role']!r} is unknown")
    if obj["state"] not in STATES:
        raise StatusError(f"status state {obj['state']!r} is unknown")
    for key in ("total", "done", "uploaded", "from_seeder", "from_peers", "hash_failures", "peers"):
        if obj[key] < 0:
            raise StatusError(f"status field {key!r} is negative")
    return obj


def read_status(path: str) -> dict[str, Any]:
    """Read and validate the status file at ``path``.

    :raises StatusError: if it is unreadable or malformed.
    """
    try:
        with open(path, "rb") as fh:
            return parse_status(fh.read(1024 * 1024))
    except OSError as exc:
        raise StatusError(f"cannot read status file {path}: {exc.strerror}") from exc


def write_status(path: str, status: dict[str, Any]) -> None:
    """Replace the status file at ``path`` atomically with ``status``."""
    replace_file(path, json.dumps(status).encode("utf-8"))
