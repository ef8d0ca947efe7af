"""``murder.setup`` to N real hosts: what the control host uploads and spends (issue 16).

Run as root on Linux::

    python -m benchmarks.setup_scale --hosts 64,256 --out docs/lab/setup-scale.json

For each N it brings up a fleet of N hosts (its own name, ``--name``; eight
racks), then runs the real :func:`fabmurder.pipeline.setup` into a fresh
``remote_path`` on every host, so each host really gets the wheels and
builds its venv. It records:

- the bytes the control host sent into the fleet: the fleet bridge's
  ``tx_bytes``, which counts what the root namespace (the control host)
  sends, and not what hosts relay to each other across the bridge;
- that figure over the wheel set's size: the goal is at most 4 x, whatever
  N is (the relays hand the wheels on);
- the control process's CPU seconds (``getrusage``) in all and per host,
  its peak thread count, and the wall time;
- how many hosts ended "installed".

The goal "its CPU per host stays flat from 64 to 256" is judged on the
ratio of the per-host CPU at the largest N to the smallest. The hosts share
this machine's cores with the control process, so wall time is not the
claim here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fabmurder import install, pipeline, wheel_relay
from fabmurder.config import settings
from fabmurder.testing import fleet as fleets
from fabmurder.testing import net
from fabmurder.testing.deploykit import DeployKit

REMOTE = "/srv/fabmurder/setup-bench"
GOAL_UPLOAD = 4.0
GOAL_FLAT = 1.3


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tx_bytes(bridge: str) -> int:
    return int(Path(f"/sys/class/net/{bridge}/statistics/tx_bytes").read_text())


class ThreadPeak:
    """Sample the process's thread count every 50 ms while entered."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wheel_dir(out: Path) -> tuple[str, int]:
    """Copy the agent's wheel set to ``out``; return the directory and its size in bytes."""
    from invoke import Context

    out.mkdir(parents=True, exist_ok=True)
    size = 0
    for path in install.wheel_set(settings(Context())).paths:
        data = path.read_bytes()
        (out / path.name).write_bytes(data)
        size += len(data)
    return str(out), size


def one(n: int, name: str, wheels: str, wheel_bytes: int) -> dict[str, Any]:
    """Set up a fleet of ``n`` hosts; return the run's figures."""
    racks = 8 if n >= 64 else 1
    fleet = fleets.up(n, name=name, racks=racks)
    try:
        kit = DeployKit(fleet, wheels)
        murder = {**kit.murder(peers=range(2, n + 1)), "remote_path": REMOTE}
        bridge = net.bridge_name(name)
        sent, cpu, began = tx_bytes(bridge), cpu_seconds(), time.monotonic()
        with ThreadPeak() as threads:
            result = pipeline.setup(kit.context(murder))
        wall = time.monotonic() - began
        cpu = cpu_seconds() - cpu
        sent = tx_bytes(bridge) - sent
        ok = sum(1 for value in result.succeeded.values() if value == "installed")
        return {
            "n": n,
            "installed": ok,
            "failed": result.failed,
            "wall_s": round(wall, 2),
            "control_cpu_s": round(cpu, 2),
            "control_cpu_ms_per_host": round(1000 * cpu / n, 1),
            "threads_max": threads.peak,
            "control_sent_bytes": sent,
            "wheel_set_bytes": wheel_bytes,
            "sent_over_wheel_set": round(sent / wheel_bytes, 2),
            "relays": wheel_relay.RELAYS,
            "load_before": list(os.getloadavg()),
        }
    finally:
        fleets.down(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.setup_scale", description=__doc__)
    p.add_argument("--hosts", default="64,256", help="comma-separated fleet sizes")
    p.add_argument("--name", default="su", help="fleet name")
    p.add_argument("--out", default="docs/lab/setup-scale.json")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.hosts.split(",")]
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    wheels, wheel_bytes = wheel_dir(Path(f"/run/fabmurder/setup-bench-wheels-{args.name}"))
    runs = []
    for n in sizes:
        run = one(n, args.name, wheels, wheel_bytes)
        runs.append(run)
        print(json.dumps(run), flush=True)
    small, large = runs[0], runs[-1]
    flat = large["control_cpu_ms_per_host"] / max(small["control_cpu_ms_per_host"], 1e-9)
    worst = max(r["sent_over_wheel_set"] for r in runs)
    goals = {
        "upload": {
            "goal": f"the control host sends at most {GOAL_UPLOAD:g} x the wheel set",
            "measured": worst,
            "met": worst <= GOAL_UPLOAD,
        },
        "flat": {
            "goal": f"control CPU per host at N={large['n']} <= {GOAL_FLAT:g} x N={small['n']}",
            "measured": round(flat, 2),
            "met": flat <= GOAL_FLAT,
        },
        "all_installed": all(r["installed"] == r["n"] for r in runs),
    }
    doc = {
        "command": "python -m benchmarks.setup_scale "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
        "goals": goals,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(goals, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
