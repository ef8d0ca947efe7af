"""Can every host of a lab fleet reach every other? The kernel's ARP table, with and without room.

``python -m benchmarks.mesh --hosts 80 [--default-limits] --out FILE`` brings
up a fleet, connects every ordered pair of hosts (host A to host B's sshd),
and writes a JSON object: the ARP table limits in force, how many hosts
could not reach some other host, and how many pairs failed. With
``--default-limits`` it first sets the kernel's limits back to Linux's
defaults (128/512/1,024) and brings the fleet up without raising them, to
show what :func:`fabmurder.testing.net.make_neighbour_room` is for; the
limits are raised again at the end (they are one setting for the whole
machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

from fabmurder.testing import fleet, net

#: connect to every address given (16 at once); print the failures' count and the first three
MESH = r"""
import socket, sys
from concurrent.futures import ThreadPoolExecutor
def connect(addr):
    try:
        socket.create_connection((addr, 22), timeout=5).close()
    except OSError as exc:
        return f"{addr}: {exc}"
with ThreadPoolExecutor(16) as threads:
    failed = [f for f in threads.map(connect, sys.argv[1:]) if f]
print(len(failed), "; ".join(failed[:3]))
"""
DEFAULTS = (128, 512, 1024)


def limits() -> list[int]:
    return [int(Path(net.NEIGH_SYSCTL.format(i)).read_text()) for i in (1, 2, 3)]


def run(hosts: int, default_limits: bool, name: str) -> dict[str, object]:
    """Bring up ``hosts`` hosts, connect every pair, tear down; return the counts."""
    if default_limits:
        for i, value in enumerate(DEFAULTS, 1):
            Path(net.NEIGH_SYSCTL.format(i)).write_text(f"{value}\n")
    room = mock.patch.object(net, "make_neighbour_room") if default_limits else None
    if room is not None:
        room.start()  # the fleet as it was before: the kernel's own limits
    try:
        up = fleet.up(hosts, name=name, racks=2)
    finally:
        if room is not None:
            room.stop()
    try:
        in_force = limits()

        def reach(host: fleet.Host) -> int:
            others = [a for a in up.addresses if a != host.address]
            out = up.run_in(host, ["/usr/bin/python3", "-c", MESH, *others]).stdout
            return int(out.split()[0])

        with ThreadPoolExecutor(8) as threads:
            failed = list(threads.map(reach, up.hosts))
    finally:
        fleet.down(name)
        net.make_neighbour_room(hosts)
    return {
        "hosts": hosts,
        "default_limits": default_limits,
        "gc_thresh": in_force,
        "hosts_that_could_not_reach_some_host": sum(1 for n in failed if n),
        "pairs_failed": sum(failed),
        "pairs": hosts * (hosts - 1),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mesh", description=__doc__)
    p.add_argument("--hosts", type=int, default=80)
    p.add_argument("--default-limits", action="store_true")
    p.add_argument("--name", default="mesh")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = run(args.hosts, args.default_limits, args.name)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
