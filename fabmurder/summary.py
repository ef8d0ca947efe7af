"""The lines ``murder.status`` prints: one per host, and the tracker's swarms."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def status_lines(state: Mapping[str, dict[str, Any]]) -> list[str]:
    """Return the summary of :func:`fabmurder.releases.status`'s result, one line per host."""
    lines = []
    for host, entry in state.items():
        if host == "tracker":
            swarms = entry.get("swarms")
            summary = f"{len(swarms)} swarm(s)" if isinstance(swarms, dict) else entry
            lines.append(f"tracker: {summary}")
            for info_hash, swarm in (swarms or {}).items():
                lines.append(f"  {info_hash}: {json.dumps(swarm, sort_keys=True)}")
            continue
        lines.append(f"[{host}] {'+'.join(entry['roles'])}: {describe(entry)}")
    return lines


def describe(entry: dict[str, Any]) -> str:
    """Return one line about a host's status entry."""
    if "error" in entry:
        return f"unreachable: {entry['error']}"
    status = entry.get("status") or {}
    if status.get("agent") is False:
        return "agent not installed"
    daemons = [
        f"{name} (pid {d.get('pid')})"
        for name, d in sorted((status.get("daemons") or {}).items())
        if isinstance(d, dict) and d.get("alive")
    ]
    parts = [f"running: {', '.join(daemons) or 'nothing'}"]
    layout = entry.get("layout") or {}
    if layout.get("error"):
        parts.append(f"releases unreadable: {layout['error']}")
    elif layout.get("current") or layout.get("releases"):
        parts.append(f"current: {layout.get('current') or 'none'}")
        parts.append(f"releases: {', '.join(layout.get('releases') or []) or 'none'}")
    else:
        flat = status.get("releases") or []
        parts.append(f"releases: {', '.join(map(str, flat)) or 'none'}")
    if status.get("partials"):
        parts.append(f"partial: {', '.join(map(str, status['partials']))}")
    return "; ".join(parts)
