"""Scaling benchmark: a release to N peers by swarm and by central push, on a local fleet.

Run as root on Linux (``inv bench`` or ``python -m benchmarks.scaling``). It
brings up its own fleet (name ``bench``): host 1 is tracker and seeder, the
others are peers, every link capped with ``tc``. For each N it deploys the
same payload with the real :func:`fabmurder.pipeline.distribute_files`,
``--repeat`` times, and times each run three ways: the whole call, from the
seeder's start of seeding to the last peer's installed release, and to the
last peer's verified pieces. The central push copies a tarball of the same
payload from the seeder to the N peers with parallel ``scp``, run on the
seeder itself, and is timed end to end. A last, uncapped run of a 1 MiB
release breaks ``distribute_files`` down by phase. The verdict
(:mod:`benchmarks.summary`) judges medians, and whole runs against measured
pushes only. Results go to ``docs/perf-results.json``, ``docs/perf-scaling.png``
(:mod:`benchmarks.plot`) and the generated blocks of ``docs/performance.md``
(:mod:`benchmarks.page`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from invoke import Context

from benchmarks import page, plot
from benchmarks.summary import summarise
from fabmurder import install, pipeline
from fabmurder.config import settings
from fabmurder.report import DeployReport, Event
from fabmurder.testing import fleet as fleets
from fabmurder.testing.fleet import Fleet, Host

ROOT = Path(__file__).resolve().parent.parent
AGENT = "/srv/fabmurder/agent"
TEMP = "/srv/fabmurder/tmp"
DEST = "/srv/releases"
BUILD = "/srv/build"
SMALL = "/srv/small"
PUSH = "/srv/push.tar"
MIB = 1024 * 1024
OUT = ROOT / "docs" / "perf-results.json"
PLOT = ROOT / "docs" / "perf-scaling.png"
PAGE = ROOT / "docs" / "performance.md"


def load() -> list[float]:
    """Return the 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def settle(below: float, at_most: float) -> dict[str, Any]:
    """Wait until the 1-minute load average is under ``below``, for at most ``at_most`` s.

    A fleet of hundreds of hosts leaves the machine loaded for a minute or
    more after it is gone; the next run measured at once pays for it in
    CPU seconds (N = 64 simulated after 256 real hosts ran at load 124).
    Returns the seconds waited and the load when the run starts, for its record.
    """
    started = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - started < at_most:
        time.sleep(2.0)
    return {"settled_s": round(time.monotonic() - started, 1), "load_before": load()}


def context(fl: Fleet, peers: list[Host], extra: dict[str, Any]) -> Context:
    """Return a Context whose ``murder`` config deploys from host 1 to ``peers``."""
    seeder = fl.hosts[0].host_string
    config = fl.fabric_config()
    config["murder"] = {
        "known_hosts": str(fl.known_hosts_path),
        "tracker": seeder,
        "seeder": seeder,
        "peers": [h.host_string for h in peers],
        "remote_path": AGENT,
        "temp_path": TEMP,
        "files_path": BUILD,
        "destination_path": DEST,
        "timeout": 300,
        "seed_after": 5,
        **extra,
    }
    return Context(config=config)


def shape(fl: Fleet, rate_mbit: float | None) -> None:
    """Cap every host's link at ``rate_mbit`` both ways, or remove the cap (None)."""
    for h in fl.hosts:
        for prefix, dev in (([], h.veth), (["-n", h.netns], "eth0")):
            if rate_mbit is None:
                cmd = ["tc", *prefix, "qdisc", "del", "dev", dev, "root"]
                subprocess.run(cmd, capture_output=True)
                continue
            burst = max(128 * 1024, int(rate_mbit * 1e6 / 8 / 100))
            tbf = ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst)]
            cmd = ["tc", *prefix, "qdisc", "replace", "dev", dev, *tbf, "latency", "50ms"]
            subprocess.run(cmd, check=True, capture_output=True)


def status_file(fl: Fleet, host: Host, path: str) -> dict[str, Any]:
    """Read one agent status file on ``host`` (empty dict if missing)."""
    out = fl.run_in(host, ["sh", "-c", f"cat {path} 2>/dev/null || true"])
    text = out.stdout.strip()
    return json.loads(text) if text else {}


def clear_releases(fl: Fleet, hosts: list[Host]) -> None:
    """Remove installed releases on ``hosts`` so tmpfs does not fill up between runs."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda h: fl.run_in(h, ["rm", "-rf", DEST]), hosts))


def deploy(fl: Fleet, n: int, tag: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Run distribute_files to the first ``n`` peers; return timings, bytes and phases."""
    seeder = fl.hosts[0]
    peers = fl.hosts[1 : n + 1]
    events: list[tuple[float, str]] = []
    seed_status: dict[str, Any] = {}
    read_s: list[float] = []

    def on_event(event: Event) -> None:
        if event.kind != "phase":
            return
        events.append((event.at, event.message))
        if event.message.startswith("stopping seeding"):
            # The seeder's status file goes with the clean-up that follows. The
            # read runs inside distribute_files, so its time is part of wall_s.
            read_at = time.monotonic()
            seed_status.update(status_file(fl, seeder, f"{TEMP}/seed-{tag}.status.json"))
            read_s.append(time.monotonic() - read_at)

    load_before = load()
    began = time.time()
    report: DeployReport = pipeline.distribute_files(
        context(fl, peers, extra), tag=tag, on_event=on_event
    )
    ended = time.time()
    clear_releases(fl, peers)
    hosts = list(report.hosts.values())
    seeding_at = float(seed_status.get("downloaded_at") or 0.0)
    downloaded = [h.downloaded_at or 0.0 for h in hosts]
    installed = [h.installed_at or 0.0 for h in hosts]
    first_start = min(h.started_at or ended for h in hosts)
    size = report.size
    from_seeder = sum(h.from_seeder for h in hosts)
    phases = phase_times(events, began, ended, seeding_at, downloaded, installed)
    cpu = [h.cpu_seconds for h in hosts if h.cpu_seconds is not None]
    return {
        "n": n,
        "tag": tag,
        "size": size,
        "ok": len(report.succeeded),
        "transfer_s": round(max(downloaded) - seeding_at, 3),
        "swarm_s": round(max(downloaded) - first_start, 3),
        "installed_s": round(max(installed) - seeding_at, 3),
        "wall_s": round(ended - began, 3),
        "bench_read_s": round(sum(read_s), 3),
        "seeder_upload": int(seed_status.get("uploaded") or 0),
        "from_seeder": from_seeder,
        "from_peers": sum(h.from_peers for h in hosts),
        "seeder_upload_over_s": round(int(seed_status.get("uploaded") or 0) / size, 3),
        "from_seeder_over_s": round(from_seeder / size, 3),
        "peer_from_seeder_mib": [round(h.from_seeder / MIB, 2) for h in hosts],
        "peer_cpu_s": [round(c, 3) for c in cpu],
        "peer_cpu_s_per_mib": round(sum(cpu) / len(cpu) / (size / MIB), 4) if cpu else None,
        "seeder_cpu_s": seed_status.get("cpu_seconds"),
        "seeder_loop_cpu_s": seed_status.get("loop_cpu_seconds"),
        "phases": phases,
        "load_before": load_before,
        "load_after": load(),
    }


def phase_times(
    events: list[tuple[float, str]],
    began: float,
    ended: float,
    seeding_at: float,
    downloaded: list[float],
    installed: list[float],
) -> dict[str, float]:
    """Split a run's wall time into phases from its phase events and the agents' clocks."""
    marks = dict(
        (key, at)
        for at, message in events
        for key, prefix in (
            ("connect", "connecting"),
            ("install", "installing the agent"),
            ("create", "creating the torrent"),
            ("tracker", "starting the tracker"),
            ("seed", "seeding"),
            ("peers", "starting "),
            ("download", "downloading on"),
            ("stop", "stopping seeding"),
        )
        if message.startswith(prefix)
    )
    # Each phase runs from its mark to the next one, whatever order the pipeline uses.
    points = [
        (began, "ssh_connect"),
        (marks.get("install"), "agent_check"),
        (marks.get("create"), "tar_and_hash"),
        (marks.get("tracker"), "tracker_start"),
        (marks.get("peers"), "peer_agent_start"),
        (marks.get("seed"), "seeder_start"),
        (seeding_at, "transfer"),
        (max(downloaded), "verify_and_extract"),
        (max(installed), "wait_for_last_poll"),
        (marks.get("stop"), "stop_and_clean"),
        (ended, "end"),
    ]
    timed = sorted((at, name) for at, name in points if at)
    out = {name: nxt - at for (at, name), (nxt, _) in zip(timed, timed[1:], strict=False)}
    return {k: round(v, 3) for k, v in out.items()}


def central_push(fl: Fleet, n: int) -> dict[str, Any]:
    """Copy the tarball from the seeder to ``n`` peers with parallel scp; time the whole push."""
    seeder = fl.hosts[0]
    peers = fl.hosts[1 : n + 1]
    ssh = (
        f"-i {fl.key_path} -o UserKnownHostsFile={fl.known_hosts_path} "
        "-o StrictHostKeyChecking=yes -o BatchMode=yes"
    )
    copies = " ".join(
        f"scp -q {ssh} -P {h.port} {PUSH} {h.user}@{h.address}:/srv/push.tar &" for h in peers
    )
    script = f"set -e; {copies} wait; echo done"
    load_before = load()
    started = time.monotonic()
    out = fl.run_in(seeder, ["sh", "-c", script], timeout=1800)
    seconds = time.monotonic() - started
    if "done" not in out.stdout:
        raise RuntimeError(f"central push to {n} peers failed: {out.stderr}")
    sizes = [fl.run_in(h, ["stat", "-c", "%s", "/srv/push.tar"]).stdout.strip() for h in peers]
    expected = fl.run_in(seeder, ["stat", "-c", "%s", PUSH]).stdout.strip()
    if any(s != expected for s in sizes):
        raise RuntimeError(f"central push to {n} peers left wrong sizes: {sizes}")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda h: fl.run_in(h, ["rm", "-f", "/srv/push.tar"]), peers))
    return {
        "n": n,
        "seconds": round(seconds, 3),
        "bytes": int(expected),
        "load_before": load_before,
        "load_after": load(),
    }


def checkpoint(results: dict[str, Any], out: str) -> None:
    """Write the measurements so far, so that a failure later loses none of them."""
    Path(out + ".partial").write_text(json.dumps(results, indent=2) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the benchmark's command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    p.add_argument("--peers", default="2,4,8,16", help="comma-separated peer counts")
    p.add_argument("--size-mib", type=int, default=64, help="payload size in MiB")
    p.add_argument("--rate", type=float, default=50.0, help="per-host cap in Mbit/s")
    p.add_argument(
        "--repeat", type=int, default=3, help="swarm runs per peer count (goals use the median)"
    )
    p.add_argument(
        "--central",
        default="2,16",
        help="peer counts to time the central push at ('all', 'none' or a list); "
        "the others are extrapolated from the measured rate, marked, and judge nothing",
    )
    p.add_argument("--central-repeat", type=int, default=1, help="central pushes per peer count")
    p.add_argument("--no-overhead", action="store_true", help="skip the 1 MiB uncapped runs")
    p.add_argument(
        "--overhead-runs", type=int, default=3, help="1 MiB uncapped runs (each one is judged)"
    )
    p.add_argument("--settings", default=None, help="libtorrent overrides as JSON")
    p.add_argument("--piece-kib", type=int, default=None, help="piece size in KiB")
    p.add_argument("--name", default="bench", help="fleet name")
    p.add_argument("--out", default=str(OUT), help="the results JSON")
    p.add_argument(
        "--plot",
        default=None,
        help=f"the plot (default: {PLOT.relative_to(ROOT)} for the default --out, "
        "else beside --out)",
    )
    p.add_argument(
        "--page",
        default=None,
        help=f"the page whose generated blocks to rewrite (default: {PAGE.relative_to(ROOT)} "
        "for the default --out, else none; '' for none)",
    )
    p.add_argument(
        "--resummarise",
        action="store_true",
        help="measure nothing: recompute the summary, plot and page blocks of the JSON at --out",
    )
    p.add_argument("--keep", action="store_true", help="reuse the fleet and leave it up")
    p.add_argument("--label", default="", help="free text stored with the results")
    return p.parse_args(argv)


def libtorrent_version() -> str:
    """Return the libtorrent version the agents run (the same wheel as this venv's)."""
    import libtorrent

    return str(libtorrent.__version__)


def counts(text: str, available: list[int]) -> list[int]:
    """Parse a ``--central`` value against the swarm's peer counts."""
    if text == "all":
        return available
    if text == "none":
        return []
    return [int(x) for x in text.split(",") if x]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Bring up the fleet, run every measurement, tear the fleet down; return the results."""
    ns = [int(x) for x in args.peers.split(",")]
    extra: dict[str, Any] = {}
    if args.settings:
        extra["libtorrent"] = json.loads(args.settings)
    if args.piece_kib:
        extra["piece_size"] = args.piece_kib * 1024
    # Frozen once: edits to the tree mid-run must not reinstall the agent.
    wheel_dir = Path(tempfile.mkdtemp(prefix="fabmurder-bench-"))
    for path in install.wheel_set(settings(Context())).paths:
        shutil.copy(path, wheel_dir / path.name)
    extra["wheel_dir"] = str(wheel_dir)
    results: dict[str, Any] = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "libtorrent": libtorrent_version(),
        },
        "size_mib": args.size_mib,
        "rate_mbit": args.rate,
        "settings": extra.get("libtorrent") or {},
        "piece_size": extra.get("piece_size"),
        # the default piece size depends on the release's size and N (metainfo.default_piece_size)
        "piece_size_by_n": True,
        "swarm": [],
        "central": [],
    }
    started = time.monotonic()
    if args.keep:
        try:
            fl = fleets.load(args.name)
        except Exception:
            fl = fleets.up(max(ns) + 1, rate_mbit=args.rate, name=args.name)
        shape(fl, args.rate)
    else:
        fl = fleets.up(max(ns) + 1, rate_mbit=args.rate, name=args.name)
    try:
        seeder = fl.hosts[0]
        print(f"fleet {args.name!r}: {len(fl.hosts)} hosts at {args.rate:g} Mbit/s", flush=True)
        pipeline.setup(context(fl, fl.hosts[1:], extra))
        print(f"agent installed ({time.monotonic() - started:.0f} s)", flush=True)
        make = (
            f"mkdir -p {BUILD} {SMALL} && head -c {args.size_mib * MIB} /dev/urandom"
            f" > {BUILD}/payload.bin && head -c {MIB} /dev/urandom > {SMALL}/payload.bin"
            f" && tar -C {BUILD} -cf {PUSH} ."
        )
        fl.run_in(seeder, ["sh", "-c", make], timeout=600)
        for n in ns:
            for i in range(args.repeat):
                r = deploy(fl, n, f"s{n}-{i}-{int(time.time())}", extra)
                results["swarm"].append(r)
                checkpoint(results, args.out)
                print(
                    f"swarm N={n:>2}: whole run {r['wall_s']:6.2f} s, "
                    f"transfer {r['transfer_s']:6.2f} s, "
                    f"seeder sent {r['seeder_upload_over_s']:.2f} x S, "
                    f"peer CPU {r['peer_cpu_s_per_mib']} s/MiB, load {r['load_before'][0]}",
                    flush=True,
                )
        for n in counts(args.central, ns):
            for _ in range(max(1, args.central_repeat)):
                c = central_push(fl, n)
                results["central"].append(c)
                checkpoint(results, args.out)
                print(
                    f"central N={n:>2}: {c['seconds']:6.2f} s (whole push), "
                    f"load {c['load_before'][0]}",
                    flush=True,
                )
        if not args.no_overhead:
            shape(fl, None)
            small = {**extra, "files_path": SMALL}
            results["overhead_runs"] = []
            for i in range(max(1, args.overhead_runs)):
                r = deploy(fl, max(ns), f"o{i}-{int(time.time())}", small)
                results["overhead_runs"].append(r)
                checkpoint(results, args.out)
                over = r["wall_s"] - r["transfer_s"]
                print(
                    f"overhead N={max(ns)}, 1 MiB, uncapped: wall {r['wall_s']} s, "
                    f"transfer {r['transfer_s']} s, {over:.2f} s more",
                    flush=True,
                )
                print(f"  phases: {r['phases']}", flush=True)
    finally:
        if not args.keep:
            fleets.down(args.name)
        shutil.rmtree(wheel_dir, ignore_errors=True)
    results["bench_seconds"] = round(time.monotonic() - started, 1)
    size = results["swarm"][0]["size"] if results["swarm"] else args.size_mib * MIB
    results["summary"] = summarise(results, size)
    return results


def outputs(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """Return the JSON, plot and page paths: docs/ only when the JSON goes there too."""
    out = Path(args.out)
    into_docs = out.resolve() == OUT
    png = Path(args.plot) if args.plot else (PLOT if into_docs else out.with_suffix(".png"))
    if args.page is None:
        return out, png, PAGE if into_docs else None
    return out, png, Path(args.page) if args.page else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or re-judge its JSON) and write the JSON, plot and page blocks."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out, plot_path, page_path = outputs(args)
    if args.resummarise:
        results = json.loads(out.read_text())
        size = results["swarm"][0]["size"] if results["swarm"] else results["size_mib"] * MIB
        results["summary"] = summarise(results, size)
    else:
        results = run(args)
    out.write_text(json.dumps(results, indent=2) + "\n")
    Path(args.out + ".partial").unlink(missing_ok=True)
    wrote = [str(out)]
    if plot_path and results["summary"]["rows"]:
        plot.plot(results, str(plot_path))
        wrote.append(str(plot_path))
    if page_path:
        page_path.write_text(page.rewrite(page_path.read_text(), results))
        wrote.append(str(page_path))
    print(page.tables(results))
    print(f"wrote {', '.join(wrote)}; the benchmark took {results['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
