"""A sample user fabfile: fabmurder's tasks plus a deploy task of our own.

Run it with a per-environment config file::

    fab -f staging.yaml deploy
    fab -f staging.yaml deploy --tag v42
    fab -f staging.yaml murder.status

``deploy`` chains fabmurder's ``distribute_files`` with ``activate``, a task
of this project's own that runs once the release has landed on every peer.
"""

from __future__ import annotations

import shlex
from typing import Any

from fabric import Connection, task
from invoke import Collection

import fabmurder
from fabmurder.tasks import distribute_files


@task(help={"tag": "the release that just landed"})
def activate(c: Any, tag: str) -> None:
    """Mark a release live on every peer (stands in for a service restart)."""
    murder = c.config.murder
    live = f"{murder.destination_path}/LIVE"
    peers = murder.peers if isinstance(murder.peers, list) else murder.peers.split(",")
    for host in peers:
        with Connection(host.strip(), config=c.config) as conn:
            conn.run(f"printf '%s\\n' {shlex.quote(tag)} > {shlex.quote(live)}", hide=True)
            print(f"[{host}] {tag} is live")


@task(help={"tag": "release name (default: a UTC timestamp)"})
def deploy(c: Any, tag: str | None = None) -> None:
    """Ship the build to every peer over BitTorrent, then make it live."""
    report = distribute_files(c, tag=tag)
    activate(c, report.tag)


ns = Collection(deploy, activate)
ns.add_collection(fabmurder.ns, name="murder")
