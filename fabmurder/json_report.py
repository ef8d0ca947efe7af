"""The machine-readable result of a run, for CI: one JSON document, on success and on failure.

``--report FILE`` (or ``murder.report``) makes the deploy tasks write it.
Its schema is :data:`SCHEMA`, documented in ``docs/report.md``; version 1
is the first. ``ok`` and ``exit`` say how the run ended (0 success, 1
failure, 130 interrupted), as the process's exit code does.

The document is built from what the run returned or raised (a
:class:`~fabmurder.report.DeployReport`, a :class:`~fabmurder.errors.DeployError`
carrying one, or another error before any host was touched) and written
atomically (a temporary file renamed over ``FILE``), so a CI job never reads
half a report.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from fabmurder.dryrun import DryRun
from fabmurder.errors import DeployError
from fabmurder.report import DeployReport

T = TypeVar("T")
VERSION = 1

_HOST = {
    "type": "object",
    "required": ["ok", "state", "reason", "seconds", "bytes", "from_seeder", "from_peers"],
    "properties": {
        "ok": {"type": "boolean"},
        "state": {"type": "string"},
        "reason": {"type": ["string", "null"]},
        "seconds": {"type": ["number", "null"]},
        "started_at": {"type": ["number", "null"]},
        "installed_at": {"type": ["number", "null"]},
        "bytes": {"type": "integer"},
        "from_seeder": {"type": "integer"},
        "from_peers": {"type": "integer"},
        "switched": {"type": "boolean"},
        "previous": {"type": ["string", "null"]},
    },
}

#: the JSON Schema (draft 2020-12 subset) of the report; docs/report.md shows it
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "task", "ok", "exit", "tag", "started_at", "ended_at", "hosts"],
    "properties": {
        "version": {"type": "integer", "enum": [VERSION]},
        "task": {"type": "string"},
        "ok": {"type": "boolean"},
        "exit": {"type": "integer", "enum": [0, 1, 130]},
        "error": {"type": ["string", "null"]},
        "tag": {"type": ["string", "null"]},
        "sha256": {"type": ["string", "null"]},
        "info_hash": {"type": ["string", "null"]},
        "size": {"type": "integer"},
        "started_at": {"type": "number"},
        "ended_at": {"type": "number"},
        "seconds": {"type": "number"},
        "dry_run": {"type": "boolean"},
        "hosts": {"type": "object", "additionalProperties": _HOST},
        "failures": {"type": "object", "additionalProperties": {"type": "string"}},
        "removed": {"type": "object", "additionalProperties": {"type": "array"}},
        "steps": {"type": "array", "items": {"type": "object", "required": ["host", "action"]}},
    },
}


def document(
    task: str,
    started: float,
    report: DeployReport | None,
    *,
    error: BaseException | None = None,
    published: Mapping[str, str | None] | None = None,
    removed: Mapping[str, list[str]] | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """Return the report document of a run that returned ``report`` or raised ``error``."""
    code = 0 if error is None else 130 if isinstance(error, KeyboardInterrupt) else 1
    switched = published or {}
    hosts: dict[str, Any] = {}
    for host, r in (report.hosts if report else {}).items():
        hosts[host] = {
            "ok": r.ok,
            "state": r.state,
            "reason": r.reason,
            "seconds": r.seconds,
            "started_at": r.started_at,
            "installed_at": r.installed_at,
            "bytes": r.bytes,
            "from_seeder": r.from_seeder,
            "from_peers": r.from_peers,
            "switched": host in switched,
            "previous": switched.get(host),
        }
    failures = dict(error.failures) if isinstance(error, DeployError) else {}
    if report:
        failures = {**report.failures, **failures}
    return {
        "version": VERSION,
        "task": task,
        "ok": error is None,
        "exit": code,
        "error": None if error is None else str(error) or type(error).__name__,
        "tag": report.tag if report else tag,
        "sha256": report.sha256 if report else None,
        "info_hash": report.info_hash if report else None,
        "size": report.size if report else 0,
        "started_at": started,
        "ended_at": time.time(),
        "seconds": report.seconds if report else 0.0,
        "hosts": hosts,
        "failures": failures,
        "removed": dict(removed or {}),
        "dry_run": False,
    }


def dry_document(task: str, plan: DryRun) -> dict[str, Any]:
    """Return the report document of a dry run: nothing ran, each step is listed."""
    now = time.time()
    return {
        "version": VERSION, "task": task, "ok": True, "exit": 0, "error": None,
        "tag": plan.tag, "sha256": None, "info_hash": None, "size": 0,
        "started_at": now, "ended_at": now, "seconds": 0.0, "dry_run": True,
        "hosts": {}, "failures": dict(plan.unreachable), "removed": {},
        "steps": [{"host": step.host, "action": step.action} for step in plan.steps],
    }  # fmt: skip


def write(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` as JSON, atomically (a temporary file renamed over it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, target)


def reported(
    path: str | None,
    task: str,
    call: Callable[[], T],
    describe: Callable[[T], dict[str, Any]],
    tag: str | None = None,
) -> T:
    """Run ``call``; with a ``path``, write its report there whether it succeeds or fails.

    :param describe: returns :func:`document`'s keyword arguments for a result.
    """
    if not path:
        return call()
    started = time.time()
    try:
        result = call()
    except (Exception, KeyboardInterrupt) as exc:
        report = getattr(exc, "report", None)
        known = report if isinstance(report, DeployReport) else None
        write(path, document(task, started, known, error=exc, tag=tag))
        raise
    write(path, document(task, started, error=None, tag=tag, **describe(result)))
    return result
