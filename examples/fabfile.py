"""A sample user fabfile: fabmurder's tasks, chained with this project's own.

One fabfile, one config file per environment (run ``fab`` in this directory)::

    fab -f deploy/staging.yaml deploy
    fab -f deploy/production.yaml deploy --tag v42
    fab -f deploy/production.yaml murder.rollback
    fab -f deploy/staging.yaml murder.status

It shows both ways to chain your own steps with fabmurder's. ``deploy`` wraps
the ``murder.deploy`` task between a pre-task (``check_build``) and a
post-task (``restart``). ``canary`` calls fabmurder's stages as plain
functions and acts between them.
"""

from __future__ import annotations

import shlex
from typing import Any

from fabric import Connection, task
from invoke import Collection
from invoke.exceptions import Exit

import fabmurder
from fabmurder import releases
from fabmurder.progress import Renderer
from fabmurder.tasks import deploy as murder_deploy

TAG_HELP = {"tag": "release name (default: murder.tag, else a UTC timestamp)"}


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


@task
def restart(c: Any) -> None:
    """Restart the app on every peer (here: write the live release to LIVE)."""
    s = fabmurder.settings(c)
    app = shlex.quote(str(s.destination_path))
    for host in s.peers:
        live = remote(c, host, f"cd {app} && readlink current > LIVE && cat LIVE").strip()
        print(f"[{host}] restarted on {live}")


@task(pre=[check_build], post=[restart], help=TAG_HELP)
def deploy(c: Any, tag: str | None = None) -> None:
    """Check the build, ship it, switch every peer to it, then restart the app."""
    murder_deploy(c, tag=tag)


@task(help=TAG_HELP)
def canary(c: Any, tag: str | None = None) -> None:
    """Ship a release, switch one peer to it and check it there, then switch the rest."""
    events = Renderer()
    try:
        report = releases.distribute(c, tag=tag, on_event=events)
        if not report.succeeded:
            raise Exit(f"canary: no peer got {report.tag}")
        first, *others = report.succeeded
        releases.publish(c, report.tag, hosts=[first], on_event=events, action="deploy")
        s = fabmurder.settings(c)
        # your smoke test here; this one checks that the release is not empty
        remote(c, first, f'test -n "$(ls -A {shlex.quote(str(s.destination_path))}/current/)"')
        print(f"[{first}] canary {report.tag} looks healthy")
        if others:
            releases.publish(c, report.tag, hosts=others, on_event=events, action="deploy")
        releases.cleanup(c, hosts=report.succeeded, on_event=events)
    except fabmurder.MurderError as exc:
        raise Exit(f"canary: {exc}") from None
    finally:
        events.close()


ns = Collection(deploy, canary, check_build, restart)
ns.add_collection(fabmurder.ns, name="murder")
