"""Deploy a sample release to a local fleet with the real ``fab`` command.

This is fabmurder's main job, end to end, and the README's first command
(``inv demo``). Run as root on Linux (the fleet is network namespaces with
real sshd)::

    python examples/demo.py [HOSTS] [RATE_MBIT]

It brings up HOSTS hosts (default 9: host 1 is tracker and seeder, the rest
are peers), each capped at RATE_MBIT Mbit/s (default 100) like a server's
NIC, builds a sample release on the seeder, and then runs, in
``examples/``::

    fab -f <fleet runtime config> murder.setup deploy --tag demo-1
    fab -f <fleet runtime config> murder.status

``deploy`` is the example project's own task: a pre-task checks the build,
``murder.deploy`` ships it through the swarm and switches ``current`` to it,
a post-task "restarts" the app. The bar and the per-host table are the ones
a user sees. The fleet is removed at the end, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fabmurder.testing import fleet

EXAMPLES = Path(__file__).resolve().parent
FAB = str(Path(sys.executable).with_name("fab"))

SAMPLE = r"""
set -e
rm -rf /srv/build
mkdir -p /srv/build/bin /srv/build/lib/empty /srv/build/data
printf '#!/bin/sh\necho hello from the release\n' > /srv/build/bin/start
chmod 755 /srv/build/bin/start
ln -s bin/start /srv/build/start
printf 'demo\n' > "/srv/build/name with spaces.txt"
head -c 33554432 /dev/urandom > /srv/build/data/blob.bin
"""


def main(hosts: int = 9, rate_mbit: float | None = 100, name: str = "demo") -> int:
    """Run the demo on a fleet of ``hosts``; return the exit status of the deploy."""
    if hosts < 2:
        raise SystemExit("the demo needs at least 2 hosts: a seeder and a peer")
    running = fleet.up(hosts, rate_mbit=rate_mbit, name=name)
    try:
        seeder, *peers = running.hosts
        cap = f"{rate_mbit:g} Mbit/s per host" if rate_mbit else "uncapped"
        print(f"fleet {name!r}: {hosts} hosts on {running.subnet}, {cap}", flush=True)
        running.run_in(seeder, ["sh", "-c", SAMPLE])
        print(f"sample release (32 MiB and a small tree) built in /srv/build on {seeder.name}")
        with tempfile.TemporaryDirectory(prefix="fabmurder-demo-") as tmp:
            runtime = running.write_fabric_yaml(
                Path(tmp) / "demo.yaml",
                extra={
                    "murder": {
                        "tracker": seeder.host_string,
                        "seeder": seeder.host_string,
                        "peers": [h.host_string for h in peers],
                        "files_path": "/srv/build",
                        "destination_path": "/srv/app",
                        "remote_path": "/srv/fabmurder/agent",
                        "temp_path": "/srv/fabmurder/tmp",
                        "timeout": 300,
                    }
                },
            )
            # fab is told its fabfile's directory; a stray fabric.yaml in
            # the caller's directory must not leak into the demo.
            env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
            fab = [FAB, "-r", str(EXAMPLES), "-f", str(runtime)]
            for argv in (
                [*fab, "murder.setup", "deploy", "--tag", "demo-1"],
                [*fab, "murder.status"],
            ):
                print("\n$ fab " + " ".join(argv[5:]), flush=True)
                status = subprocess.run(argv, env=env, check=False).returncode
                if status:
                    return status
            subprocess.run([*fab, "murder.stop-tracker"], env=env, check=False)
        return 0
    finally:
        fleet.down(name)
        print(f"fleet {name!r} removed")


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(
        main(
            int(args[0]) if args else 9,
            float(args[1]) if len(args) > 1 and args[1] != "none" else (None if args[1:] else 100),
        )
    )
