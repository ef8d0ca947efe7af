"""The control plane at scale (issue 16): ``murder.deploy`` of 1 MiB to N hosts, per phase.

``python -m benchmarks.scale`` (``inv bench.scale``) deploys to N peers on
real fleet hosts (network namespaces, real sshd and agents, one read-only
agent venv shared by all) and on a SIMULATED fleet
(:mod:`fabmurder.testing.simfleet`: real SSH servers on loopback, simulated
peers that move no data). For each phase of the deploy (connect, start,
watch, finish, publish) it records the control process's wall time, CPU
seconds, peak threads, file descriptors and RSS, the tracker's requests
per second and CPU, and the hosts' CPU. It writes docs/scale-results.json,
docs/scale.png and docs/scale.md (:mod:`benchmarks.scalepage`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Context

from benchmarks import scalepage
from benchmarks.profiling import AllThreads
from benchmarks.scaling import settle
from fabmurder import install, pipeline, releases
from fabmurder.async_ssh import AsyncConnection
from fabmurder.config import SSH_BACKENDS, settings
from fabmurder.remote import FastConnection
from fabmurder.report import Event
from fabmurder.testing import fleet as real_fleet
from fabmurder.testing import simfleet
from fabmurder.testing.deploykit import AGENT, DeployKit

ROOT = Path(__file__).resolve().parents[1]
#: a phase event's message (its start) -> the benchmark's phase it opens
PHASES = {
    "connecting": "connect",
    "creating the torrent": "start",
    "downloading on": "watch",
    "stopping seeding": "finish",
    "pointing current": "publish",
}
TICK = os.sysconf("SC_CLK_TCK")
SIZE = 1 << 20


def proc_cpu(pid: int, children: bool = True) -> float:
    """Return a process's CPU seconds (with its reaped children's), 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2 :].split()
    ticks = sum(int(x) for x in fields[11 : 15 if children else 13])
    return ticks / TICK


def own_status() -> dict[str, float]:
    """Return this process's threads, open fds and RSS (MiB)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        "threads": int(status["Threads"]),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
    }


class Meter:
    """Phase marks of one deploy (from its events) and the peaks between them.

    The meter's own CPU (its reads of /proc and of the tracker's /metrics) is
    taken out of the control process's CPU.
    """

    def __init__(self, tracker: Callable[[], tuple[float, int]], hosts: Callable[[], float]):
        self.tracker, self.hosts = tracker, hosts
        self.marks: list[tuple[str, dict[str, float]]] = []
        self.peaks: dict[str, dict[str, float]] = {}
        self.own = 0.0
        self.sampler_cpu = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Meter:
        self.mark("connect")
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        self.mark("end")

    def event(self, e: Event) -> None:
        if e.kind != "phase":
            return
        phase = next((v for k, v in PHASES.items() if e.message.startswith(k)), None)
        if phase and phase != self.marks[-1][0]:
            self.mark(phase)

    def mark(self, phase: str) -> None:
        began = time.thread_time()
        cpu, requests = self.tracker()
        snap = {"t": time.monotonic(), "tracker_cpu": cpu, "requests": requests}
        snap["hosts_cpu"] = self.hosts()
        self.own += time.thread_time() - began
        snap["cpu"] = time.process_time() - self.own - self.sampler_cpu
        self.marks.append((phase, snap))
        self.peaks.setdefault(phase, own_status())

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            phase = self.marks[-1][0]
            now = own_status()
            peak = self.peaks.setdefault(phase, now)
            for k, v in now.items():
                peak[k] = max(peak[k], v)
            self.sampler_cpu = time.thread_time()

    def phases(self) -> dict[str, dict[str, float]]:
        out = {}
        for (name, a), (_, b) in zip(self.marks, self.marks[1:], strict=False):
            wall = b["t"] - a["t"]
            requests = b["requests"] - a["requests"]
            out[name] = {
                "wall_s": round(wall, 3),
                "cpu_s": round(b["cpu"] - a["cpu"], 3),
                **{k: round(v, 1) for k, v in self.peaks.get(name, {}).items()},
                "tracker_cpu_s": round(b["tracker_cpu"] - a["tracker_cpu"], 3),
                "tracker_requests": requests,
                "tracker_rps": round(requests / wall, 1) if wall > 0 else 0.0,
                "hosts_cpu_s": round(b["hosts_cpu"] - a["hosts_cpu"], 2),
            }
        return out


def metrics(url: str | None) -> int:
    """Return the tracker's announces + scrapes + refused + unknown requests (0 if unreadable)."""
    if not url:
        return 0
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return 0
    names = ("announces_total", "scrapes_total", "not_found_total", "failures_total")
    return sum(
        int(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("fabmurder_tracker_") and line.split()[0].endswith(names)
    )


def deploy(c: Context, n: int, meter: Meter, profile: str | None = None) -> dict[str, Any]:
    """Run ``murder.deploy`` under ``meter``; return the run's record.

    :param profile: a path for a cProfile of the deploy's every thread
        (:mod:`benchmarks.profiling`); its CPU figures are then the profiler's too.
    """
    failures: dict[str, str] = {}
    counted: dict[str, int] = {}
    classes: tuple[Any, ...] = (FastConnection, AsyncConnection)  # whichever backend runs
    real_runs = [cls.run for cls in classes]

    def spying(real_run: Callable[..., Any]) -> Callable[..., Any]:
        def spy(self: Any, command: str, **kwargs: Any) -> Any:
            # the kind of each SSH command (a counter: the command still runs as it was)
            kind = (
                "poll" if " poll " in command else "feed" if "--while-seq" in command else "other"
            )
            counted[kind] = counted.get(kind, 0) + 1
            return real_run(self, command, **kwargs)

        return spy

    for cls, real_run in zip(classes, real_runs, strict=True):
        cls.run = spying(real_run)
    profiler = AllThreads() if profile else contextlib.nullcontext()
    with meter:
        try:
            with profiler:
                deployed = releases.deploy(c, on_event=meter.event)
            ok, failures = len(deployed.report.succeeded), {}
        except Exception as exc:  # a failed deploy is a result too
            report = getattr(exc, "report", None)
            ok = len(report.succeeded) if report is not None else 0
            failures = {h: r.reason or "?" for h, r in (report.hosts.items() if report else [])}
            failures = {h: why for h, why in failures.items() if why != "?"} or {"run": str(exc)}
        finally:
            for cls, real_run in zip(classes, real_runs, strict=True):
                cls.run = real_run
    if isinstance(profiler, AllThreads) and profile:
        print(f"profile of every thread: {profiler.write(profile)}", flush=True)
    phases = meter.phases()
    cpu = sum(p["cpu_s"] for p in phases.values())
    watch = phases.get("watch", {})
    return {
        "n": n,
        "ssh_backend": c.config.murder.get("ssh_backend") or "fabric",
        "ok": ok,
        "failed": dict(list(failures.items())[:10]),
        "failed_count": n - ok,
        "wall_s": round(sum(p["wall_s"] for p in phases.values()), 2),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_host": round(1000 * cpu / n, 2),
        "watch_cpu_per_s": round(watch.get("cpu_s", 0) / max(watch.get("wall_s", 0), 1e-9), 4),
        "tracker_watch_core_share": round(
            watch.get("tracker_cpu_s", 0) / max(watch.get("wall_s", 0), 1e-9), 3
        ),
        "threads_max": max(p.get("threads", 0) for p in phases.values()),
        "fds_max": max(p.get("fds", 0) for p in phases.values()),
        "rss_max_mib": max(p.get("rss_mib", 0) for p in phases.values()),
        "ssh_commands": {**counted, "total": sum(counted.values())},
        "ssh_commands_per_host": round(sum(counted.values()) / n, 2),
        "phases": phases,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def run_simulated(
    n: int, name: str, workers: int, backend: str = "fabric", profile: str | None = None
) -> dict[str, Any]:
    """Deploy to ``n`` simulated peers (plus the real seeder and tracker, host 1)."""
    began = time.monotonic()
    sim = simfleet.up(n + 1, name=name, workers=workers, release_size=SIZE)
    up_s = time.monotonic() - began
    try:
        temp = sim.host_dir(1) / "tmp"
        tracker_url: list[str] = []

        def tracker() -> tuple[float, int]:
            pid, token = _read(temp / "tracker.pid"), _read(temp / "tracker.token")
            if token and not tracker_url:
                tracker_url.append(f"http://{sim.addresses[0]}:8997/metrics/{token}")
            tpid = int(json.loads(pid)["pid"]) if pid else 0
            return proc_cpu(tpid, children=False), metrics(tracker_url[0] if tracker_url else None)

        def hosts() -> float:
            return sum(proc_cpu(p.pid) for p in sim.procs)

        config = sim.fabric_config()
        config["murder"] = sim.murder(
            n, tag=f"sim{n}", timeout=600, poll_interval=1.0, ssh_backend=backend
        )
        record = deploy(Context(config=config), n, Meter(tracker, hosts), profile)
        record["simulated_agent_requests"] = sum(
            int(_read(p) or 0) for p in sim.state_dir.glob("requests-*")
        )
        peers = [sim.host_string(i) for i in range(2, n + 2)]
        record["connection_costs"] = connection_costs(config, peers, backend=backend)
    finally:
        sim.down()
    return {"kind": "simulated", "fleet_up_s": round(up_s, 1), "workers": workers, **record}


def connection_costs(
    config: Any, hosts: list[str], idle: float = 5.0, backend: str = "fabric"
) -> dict[str, float]:
    """Measure what the pool's connections cost the control process, apart from any deploy.

    Per host: the CPU of opening its connection, of one trivial command over
    it (``true``), and of holding it open while nothing happens.
    """
    from fabmurder.remote import QUIET, ConnectionPool

    known = (str(config["murder"]["known_hosts"][0]),)
    with ConnectionPool(config, parallel=32, known_hosts=known, backend=backend) as pool:
        began = time.process_time()
        pool.fan_out(hosts, lambda conn: conn.open())
        opened = time.process_time() - began
        began = time.process_time()
        ran = pool.fan_out(hosts, lambda conn: conn.run("true", **QUIET).exited)
        command = time.process_time() - began
        began, wall = time.process_time(), time.monotonic()
        time.sleep(idle)  # nothing to do: what the open connections cost by themselves
        idled = (time.process_time() - began) / (time.monotonic() - wall)
        threads = own_status()["threads"]
    n = len(hosts)
    return {
        "hosts": n,
        "ok": len(ran.succeeded),
        "connect_ms_per_host": round(1000 * opened / n, 2),
        "command_ms_per_host": round(1000 * command / n, 2),
        "idle_cpu_per_s": round(idled, 4),
        "idle_us_per_host_per_s": round(1e6 * idled / n, 1),
        "threads_while_open": threads,
    }


def run_connections(n: int, name: str, workers: int, backend: str = "fabric") -> dict[str, Any]:
    """Only open, use once and hold connections to ``n`` simulated hosts (no deploy)."""
    sim = simfleet.up(n + 1, name=name, workers=workers, release_size=SIZE)
    try:
        config = sim.fabric_config()
        config["murder"] = sim.murder(n)
        hosts = [sim.host_string(i) for i in range(2, n + 2)]
        costs = connection_costs(config, hosts, backend=backend)
    finally:
        sim.down()
    return {
        "kind": "simulated",
        "n": n,
        "ssh_backend": backend,
        "connections_only": True,
        "connection_costs": costs,
    }


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def shared_agent(name: str, wheel_dir: str) -> Path:
    """Install the agent once (the real setup, on a 2-host fleet); return a copy of it to share."""
    base = real_fleet.up(2, name=real_fleet.sibling_name(name, "ab"))
    try:
        kit = DeployKit(base, wheel_dir)
        pipeline.setup(kit.context(kit.murder(peers=[2])))
        source = Path("/run/fabmurder") / f"{base.name}-agent"
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        base.run_in(base.host(2), ["cp", "-a", f"{AGENT}/.", str(source)])
        return source
    finally:
        real_fleet.down(base.name)


def run_real(
    n: int, name: str, wheel_dir: str, agent: Path, backend: str = "fabric"
) -> dict[str, Any]:
    """Deploy to ``n`` real peers (hosts over n // 32 racks, up to 8)."""
    began = time.monotonic()
    racks = min(8, max(1, n // 32))
    fl = real_fleet.up(n + 1, name=name, racks=racks, shared={AGENT: str(agent)})
    up_s = time.monotonic() - began
    try:
        kit = DeployKit(fl, wheel_dir)
        kit.make_tree(1, kit.files_path, SIZE)
        seeder = fl.host(1)
        known: dict[str, Any] = {}

        def tracker() -> tuple[float, int]:
            if "pid" not in known:
                pid = kit.pid(1, "tracker.pid")
                if pid:
                    known["pid"] = pid
                    token = kit.sh(1, 'cat -- "$1"', f"{kit.temp_path}/tracker.token").strip()
                    known["url"] = f"http://{seeder.address}:{kit.tracker_port}/metrics/{token}"
            return proc_cpu(known.get("pid", 0), children=False), metrics(known.get("url"))

        roots = [p for h in fl.hosts for p in (h.pid, h.sshd_pid) if p]

        def hosts() -> float:
            return tree_cpu(roots) - proc_cpu(known.get("pid", 0), children=False)

        murder = kit.murder(
            peers=range(2, n + 2), tag=f"real{n}", timeout=300, poll_interval=1.0,
            ssh_backend=backend,
        )  # fmt: skip
        record = deploy(kit.context(murder), n, Meter(tracker, hosts))
    finally:
        real_fleet.down(name)
    return {"kind": "real", "fleet_up_s": round(up_s, 1), "racks": racks, **record}


def tree_cpu(roots: list[int]) -> float:
    """Return the CPU seconds of ``roots`` and all their descendants (reaped ones included)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(text[text.rfind(")") + 2 :].split()[1])
    inside = set(roots)
    changed = True
    while changed:
        grown = {p for p, pp in parent.items() if pp in inside} - inside
        inside |= grown
        changed = bool(grown)
    return sum(proc_cpu(p) for p in inside)


def wheels(out: Path) -> str:
    """Build the agent's wheels from this tree once; return their directory."""
    out.mkdir(parents=True, exist_ok=True)
    for path in install.wheel_set(settings(Context())).paths:
        shutil.copy(path, out / path.name)
    return str(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    p.add_argument("--real", default="16,64,256", help="peer counts on real hosts ('' for none)")
    p.add_argument("--sim", default="64,1000,5000", help="peer counts on the simulated fleet")
    p.add_argument(
        "--sim-connections",
        default="",
        help="simulated host counts where only the connections' costs are measured (no deploy)",
    )
    p.add_argument("--quick", action="store_true", help="N = 16 real and 1,000 simulated")
    p.add_argument(
        "--render",
        action="store_true",
        help="only judge, plot and write the page from the runs already in --out",
    )
    p.add_argument(
        "--note", action="append", default=[], help="a line for the page's notes (repeatable)"
    )
    p.add_argument("--workers", type=int, default=1, help="simulated fleet server processes")
    p.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="before each run, wait up to this many seconds for the load to fall (0: never)",
    )
    p.add_argument(
        "--settle-load",
        type=float,
        default=2.0 * (os.cpu_count() or 1),
        help="the 1-minute load average a run waits to fall under (default: 2 x the cores)",
    )
    p.add_argument(
        "--backend",
        choices=SSH_BACKENDS,
        default="fabric",
        help="the control host's SSH backend (murder.ssh_backend)",
    )
    p.add_argument(
        "--profile",
        default="",
        help="cProfile every thread of each simulated deploy to PROFILE-<backend>-<N>.prof(.txt)",
    )
    p.add_argument("--name", default=os.environ.get("FABMURDER_FLEET_NAME", "sm")[:3])
    p.add_argument("--out", default=str(ROOT / "docs" / "scale-results.json"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "scale.png"))
    p.add_argument("--page", default=str(ROOT / "docs" / "scale.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.real, args.sim = "16", "1000"
    return args


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[str, Any] = {
        "label": "control plane at scale: real hosts and a SIMULATED fleet (docs/scale.md)",
        "simulation": simfleet.LABEL,
        "release_bytes": SIZE,
        "parallel": settings(Context()).parallel,
        "ssh_backend": args.backend,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m benchmarks.scale", *(argv or sys.argv[1:])]),
        "runs": [],
        "connections": [],
        "notes": args.note,
    }

    def save() -> None:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    real = counts(args.real)
    if real:
        built = wheels(Path(f"/tmp/fabmurder-scale-{args.name}-wheels"))
        agent = shared_agent(args.name, built)
        try:
            for n in real:
                print(f"real fleet: {n} peers ...", flush=True)
                quiet = settle(args.settle_load, args.settle)
                results["runs"].append(
                    run_real(
                        n, real_fleet.sibling_name(args.name, "rl"), built, agent, args.backend
                    )
                    | quiet
                )
                print(scalepage.line(results["runs"][-1]), flush=True)
                save()
        finally:
            shutil.rmtree(agent, ignore_errors=True)
    for n in counts(args.sim):
        print(f"SIMULATED fleet: {n} peers ...", flush=True)
        profile = f"{args.profile}-{args.backend}-{n}.prof" if args.profile else None
        quiet = settle(args.settle_load, args.settle)
        results["runs"].append(
            run_simulated(n, f"{args.name}s", args.workers, args.backend, profile) | quiet
        )
        print(scalepage.line(results["runs"][-1]), flush=True)
        save()
    for n in counts(args.sim_connections):
        print(f"SIMULATED fleet: connections to {n} hosts only ...", flush=True)
        results["connections"].append(
            run_connections(n, f"{args.name}s", args.workers, args.backend)
        )
        print(results["connections"][-1]["connection_costs"], flush=True)
        save()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    return render(args)


def render(args: argparse.Namespace) -> int:
    """Judge the runs in ``args.out``, refit the model, write the JSON, the plot and the page."""
    results = json.loads(Path(args.out).read_text())
    results.setdefault("finished", "stopped before the end (--render)")
    results["model"] = scalepage.refit(results["runs"], results["parallel"], results["connections"])
    results["goals"] = scalepage.goals(results["runs"], results["parallel"])
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    scalepage.plot(results, args.plot)
    # rendered from the JSON as saved, as tests/test_docs_scale.py renders it
    Path(args.page).write_text(scalepage.page(json.loads(json.dumps(results))))
    for goal in results["goals"]:
        print(f"{goal['verdict']:>12}  {goal['goal']}: {goal['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
