"""Deploy a sample release to a local fleet: fabmurder's main job, end to end.

Run as root on Linux (the fleet is network namespaces with real sshd)::

    python examples/demo.py [HOSTS]

It brings up HOSTS hosts (default 8: one tracker+seeder, the rest peers),
installs the agent on them, builds a sample release on the seeder, deploys
it with the progress bar and the per-host table the ``fab`` tasks draw, and
removes the fleet again.
"""

from __future__ import annotations

import sys

from invoke import Context

from fabmurder import pipeline
from fabmurder.progress import Renderer, table
from fabmurder.testing import fleet

SAMPLE = r"""
set -e
mkdir -p /srv/build/bin /srv/build/lib/empty /srv/build/data
printf '#!/bin/sh\necho hello from the release\n' > /srv/build/bin/start
chmod 755 /srv/build/bin/start
ln -s bin/start /srv/build/start
head -c 33554432 /dev/urandom > /srv/build/data/blob.bin
"""


def main(hosts: int = 8, name: str = "demo", rate_mbit: float | None = 200) -> int:
    """Run the demo on a fleet of ``hosts``; return the process exit status."""
    running = fleet.up(hosts, rate_mbit=rate_mbit, name=name)
    try:
        seeder, *peers = running.hosts
        config = running.fabric_config()
        config["murder"] = {
            "tracker": seeder.host_string,
            "seeder": seeder.host_string,
            "peers": [h.host_string for h in peers],
            "known_hosts": str(running.known_hosts_path),
            "remote_path": "/srv/fabmurder/agent",
            "temp_path": "/srv/fabmurder/tmp",
            "files_path": "/srv/build",
            "destination_path": "/srv/releases",
            "timeout": 120,
            "poll_interval": 0.5,
        }
        c = Context(config=config)
        cap = f"{rate_mbit:g} Mbit/s per host" if rate_mbit else "uncapped"
        print(f"fleet {name!r}: {hosts} hosts on {running.subnet}, {cap}")
        running.run_in(seeder, ["sh", "-c", SAMPLE])
        renderer = Renderer()
        try:
            report = pipeline.distribute_files(c, tag="demo-1", on_event=renderer)
        finally:
            renderer.close()
        print(table(report))
        pipeline.stop_tracker(c)
        return 0 if not report.failures else 1
    finally:
        fleet.down(name)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8))
