"""This project's deploy hooks: each takes the run's context (fabmurder.hooks.RunContext).

Named in a deploy config under ``murder.hooks`` (``stage: ["checks:name"]``)
or registered in the fabfile with ``@fabmurder.hooks.on(stage)``.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from fabric import Connection


def on_hosts(run: Any, hosts: list[str], command: str) -> dict[str, str]:
    """Run ``command`` on ``hosts`` with the user's Fabric config; return host -> stdout."""
    out = {}
    for host in hosts:
        with Connection(host, config=run.c.config) as conn:
            result = conn.run(command, hide=True, warn=True, in_stream=False)
        if result.failed:
            raise RuntimeError(f"[{host}] {command} failed: {result.stderr.strip()}")
        out[host] = str(result.stdout)
    return out


def version_file(run: Any) -> None:
    """Refuse a release without a VERSION file (stage ``distributed``: before any switch)."""
    release = f"{run.settings.destination_path}/releases/{run.tag}"
    on_hosts(run, run.received, f"test -s {shlex.quote(release)}/VERSION")


def audit(run: Any) -> None:
    """Append one JSON line per stage to the file ``DEPLOY_AUDIT_LOG`` names (for CI)."""
    path = os.environ.get("DEPLOY_AUDIT_LOG")
    if not path:
        return
    line = {
        "stage": run.stage,
        "tag": run.tag,
        "hosts": list(run.hosts),
        "received": list(run.received),
        "switched": sorted(run.switched),
        "probed": sorted(run.plan.found.addresses) if run.plan else [],
        "error": None if run.error is None else str(run.error),
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")
