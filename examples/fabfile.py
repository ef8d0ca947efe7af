"""A sample user fabfile: fabmurder's tasks, chained with this project's own.

One fabfile, one config file per environment (run ``fab`` in this directory)::

    fab -f deploy/staging.yaml deploy
    fab -f deploy/production.yaml deploy --tag v42
    fab -f deploy/production.yaml canary --tag v43
    fab -f deploy/production.yaml murder.rollback
    fab -f deploy/staging.yaml murder.status

``deploy`` wraps ``murder.deploy`` with a pre-task (``check_build``); the
app is restarted by a hook of the ``published`` stage, which sees exactly
the hosts that switched. ``canary`` is a rolling deploy: one peer at a
time, each checked before the next, and every switched peer put back when
a check fails. ``checks.py`` holds hooks a config file can name.
"""

from __future__ import annotations

import shlex
from typing import Any

from fabric import Connection, task
from invoke import Collection
from invoke.exceptions import Exit

import fabmurder
from fabmurder import hooks
from fabmurder.tasks import deploy as murder_deploy

HELP = {
    "tag": "release name (default: murder.tag, else a UTC timestamp)",
    "peers": "only these peers (comma-separated), a subset of murder.peers",
    "report": "write the run's result as JSON to this file",
}
#: the canary's smoke test, run in current on each switched peer
HEALTHY = 'test -x bin/app && test -n "$(cat VERSION)"'


def remote(c: Any, host: str, command: str) -> str:
    """Run ``command`` on ``host`` with the user's Fabric config; fail cleanly."""
    with Connection(host, config=c.config) as conn:
        result = conn.run(command, hide=True, warn=True, in_stream=False)
    if result.failed:
        raise Exit(f"[{host}] {command} failed: {result.stderr.strip()}")
    return str(result.stdout)


@task
def check_build(c: Any) -> None:
    """Refuse to ship an empty build (runs on the seeder, before the deploy)."""
    s = fabmurder.settings(c)
    if not (s.seeder and s.files_path):
        raise Exit("check_build: set murder.seeder and murder.files_path")
    entries = remote(c, s.seeder, f"ls -A -- {shlex.quote(s.files_path)}").split("\n")
    count = len([name for name in entries if name])
    if not count:
        raise Exit(f"check_build: {s.files_path} on {s.seeder} is empty")
    print(f"[{s.seeder}] build of {count} entries is ready")


@hooks.on("published")
def restart(run: hooks.RunContext) -> None:
    """Restart the app on the peers that switched (here: write the live release to LIVE)."""
    app = shlex.quote(str(run.settings.destination_path))
    for host in run.switched:
        live = remote(run.c, host, f"cd {app} && readlink current > LIVE && cat LIVE").strip()
        print(f"[{host}] restarted on {live}")


@task(pre=[check_build], help=HELP, auto_shortflags=False)
def deploy(
    c: Any, tag: str | None = None, peers: str | None = None, report: str | None = None
) -> None:
    """Check the build, ship it, switch the peers to it and restart the app there."""
    murder_deploy(c, tag=tag, peers=peers, report=report)


@task(help=HELP, auto_shortflags=False)
def canary(
    c: Any, tag: str | None = None, peers: str | None = None, report: str | None = None
) -> None:
    """Ship a release, then switch and check one peer at a time; any failed check reverts all."""
    murder_deploy(c, tag=tag, peers=peers, report=report, batch_size="1", health_check=HEALTHY)


ns = Collection(deploy, canary, check_build)
ns.add_collection(fabmurder.ns, name="murder")
# FABRIC_MURDER_* reaches this fabfile's own tasks only if the keys exist at the root too
ns.configure(fabmurder.murder_defaults())
