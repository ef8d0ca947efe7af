"""fabmurder's own development tasks (``inv --list``).

Arguments after ``--`` pass through to the tool a task wraps, e.g.
``inv test -- -k fleet -x`` or ``inv bench.tracker -- --help``.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from invoke import Collection, Context, Exit, task

from fabmurder.testing import fleet
from fabmurder.testing.fleet import Fleet
from fabmurder.testing.net import RUN_DIR
from fabmurder.testing.proc import is_alive

ROOT = Path(__file__).resolve().parent
PYTHON = shlex.quote(sys.executable)


def passthrough() -> str:
    """Return the quoted arguments given after ``--`` on the ``inv`` command line."""
    argv = sys.argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    return " ".join(shlex.quote(a) for a in extra)


@task(help={"args": "extra pytest arguments (or give them after --)"})
def test(c: Context, args: str = "") -> None:
    """Run the test suite with pytest."""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m pytest {args} {passthrough()}".strip(), pty=False)


@task
def lint(c: Context) -> None:
    """Check style, formatting and types (ruff check, ruff format --check, mypy)."""
    failed = []
    with c.cd(str(ROOT)):
        for name, cmd in [
            ("ruff check", f"{PYTHON} -m ruff check ."),
            ("ruff format", f"{PYTHON} -m ruff format --check ."),
            ("mypy", f"{PYTHON} -m mypy"),
        ]:
            result = c.run(cmd, warn=True, pty=False)
            if result is None or result.failed:
                failed.append(name)
    if failed:
        raise Exit(f"lint failed: {', '.join(failed)}", code=1)


@task(help={"out": "output directory (default docs/_build/html)"})
def docs(c: Context, out: str = "docs/_build/html") -> None:
    """Build the Sphinx docs with warnings as errors."""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m sphinx -W --keep-going -b html docs {shlex.quote(out)}", pty=False)


@task(
    help={
        "hosts": "number of hosts (default 8)",
        "rate": "cap on each host's upload and download, in Mbit/s (default: none)",
        "name": "fleet name, 1-5 characters a-z0-9 (default fm)",
    }
)
def fleet_up(c: Context, hosts: int = 8, rate: str | None = None, name: str = "fm") -> None:
    """Bring up a local fleet of real SSH hosts (replacing one of the same name)."""
    started = time.monotonic()
    running = fleet.up(hosts, rate_mbit=float(rate) if rate else None, name=name)
    print(f"fleet {name!r}: {hosts} hosts up in {time.monotonic() - started:.2f} s")
    show(running)


@task(help={"name": "fleet name (default fm)"})
def fleet_down(c: Context, name: str = "fm") -> None:
    """Remove a local fleet and everything it made (idempotent)."""
    started = time.monotonic()
    fleet.down(name)
    print(f"fleet {name!r} down in {time.monotonic() - started:.2f} s")


@task(help={"name": "fleet name (default: every fleet that is up)"})
def fleet_status(c: Context, name: str | None = None) -> None:
    """Show the local fleets that are up, their hosts and whether each sshd runs."""
    names = [name] if name else sorted(p.name[6:] for p in Path(RUN_DIR).glob("fleet-*"))
    if not names:
        print("no fleet is up")
    for each in names:
        show(fleet.load(each))


def show(running: Fleet) -> None:
    """Print a fleet's hosts and how to reach them."""
    cap = f"{running.rate_mbit:g} Mbit/s" if running.rate_mbit else "uncapped"
    print(f"fleet {running.name!r}: {running.subnet} via {running.bridge}, {cap}")
    for h in running.hosts:
        sshd = "sshd up" if h.sshd_pid and is_alive(h.sshd_pid) else "sshd DOWN"
        print(f"  {h.name:<10} {h.host_string:<22} {h.netns:<12} {sshd}")
    print(f"  key {running.key_path}; fab -f {running.state_dir / 'fabric.yaml'}")


def run_demo(hosts: int, rate: float | None) -> None:
    """Deploy a sample release onto a fresh local fleet with the real ``fab`` (examples/demo.py)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import demo as example

    status = example.main(hosts, rate)
    if status:
        raise Exit(f"the demo deploy failed (exit status {status})", code=status)


@task(
    help={
        "hosts": "number of hosts: one tracker+seeder, the rest peers (default 9)",
        "rate": "cap on each host's link in Mbit/s, 0 for none (default 100)",
    }
)
def demo(c: Context, hosts: int = 9, rate: float = 100) -> None:
    """Deploy a sample release onto a local fleet with the real fab (fabmurder's main job)."""
    run_demo(hosts, rate or None)


@task(name="tracker")
def bench_tracker(c: Context) -> None:
    """Benchmark the tracker (python -m benchmarks.tracker; arguments after --)."""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m benchmarks.tracker {passthrough()}".strip(), pty=False)


@task(name="scaling")
def bench_scaling(c: Context) -> None:
    """Benchmark deploy time against N: swarm vs central push (python -m benchmarks.scaling)."""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m benchmarks.scaling {passthrough()}".strip(), pty=False)


fleet_ns = Collection("fleet")
fleet_ns.add_task(fleet_up, name="up")
fleet_ns.add_task(fleet_down, name="down")
fleet_ns.add_task(fleet_status, name="status")


@task(name="delta")
def bench_delta(c: Context) -> None:
    """Benchmark delta deploys: full, 1 % changed, rsync push, many files (benchmarks.delta)."""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m benchmarks.delta {passthrough()}".strip(), pty=False)


@task(name="scale", help={"quick": "N = 16 on real hosts and 1,000 simulated only"})
def bench_scale(c: Context, quick: bool = False) -> None:
    """Benchmark the control plane at scale: real and SIMULATED fleets (benchmarks.scale)."""
    flag = " --quick" if quick else ""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m benchmarks.scale{flag} {passthrough()}".strip(), pty=False)


bench_ns = Collection("bench")
bench_ns.add_task(bench_tracker)
bench_ns.add_task(bench_scaling, default=True)
bench_ns.add_task(bench_delta)
bench_ns.add_task(bench_scale)

ns = Collection(test, lint, docs, demo, fleet_ns, bench_ns)
