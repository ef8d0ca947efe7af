"""Delta benchmark: a tree release, then 1 % of it changed, against an rsync push; many small files.

Run as root on Linux (``inv bench.delta``). It brings up its own fleet
(name ``delta``; host 1 is tracker and seeder, links capped with ``tc``)
and measures, each with the real :func:`fabmurder.pipeline.distribute_files`:

- ``full``: a tree of about ``--size-mib`` in ``--files`` files (small
  sources, medium libraries, a few large binaries) to N empty peers;
- ``delta``: the same tree with about 1 % of its bytes changed (1 % of the
  files rewritten, 5 added, 5 removed, 5 renamed, one large file changed
  inside) to the peers holding the first;
- ``rsync``: ``rsync -a --link-dest`` of the changed tree from the seeder to
  every peer at once, each holding the first tree;
- ``many_files`` / ``one_file``: ``--small-files`` files of 1-8 KiB as a tree,
  and one file of the same size as a tarball, to 4 uncapped peers.

Bytes are the kernel's NIC counters (``/sys/class/net/eth0/statistics``):
what the seeder sent, what every host sent in all, and what each peer
received (SSH included). Tree runs set ``murder.layout: tree``. Results,
with the ratios the issue's goals are stated in (``goals``), go to
``docs/delta-results.json`` and ``docs/delta.png``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from invoke import Context

from benchmarks.scaling import context, load, shape
from fabmurder import install, pipeline
from fabmurder.config import settings
from fabmurder.errors import DeployError
from fabmurder.testing import fleet as fleets
from fabmurder.testing.fleet import Fleet, Host

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "delta-results.json"
PLOT = ROOT / "docs" / "delta.png"
DEST = "/srv/releases"
MIB = 1024 * 1024
#: the agents' timeout for the many-files runs (the 30,000-file tree took 250 s in December 2026)
MANY_FILES_TIMEOUT = 900
#: every measurement, in the order they run (delta and rsync need full's release)
MEASUREMENTS = ("full", "delta", "rsync", "many_files_tree", "many_files_tar", "one_file")


def make_tree(root: Path, size_mib: int, files: int, seed: int = 1) -> None:
    """Write about ``size_mib`` in ``files`` files: 90 % small, 9.5 % medium, 0.5 % large."""
    rnd = random.Random(seed)
    large = max(1, files // 200)
    medium = max(1, files * 95 // 1000)
    small = files - large - medium
    budget = size_mib * MIB
    sizes = [rnd.randint(500, 8000) for _ in range(small)]
    sizes += [rnd.randint(40_000, 400_000) for _ in range(medium)]
    rest = max(MIB, (budget - sum(sizes)) // large)
    sizes += [rest] * large
    for i, size in enumerate(sizes):
        d = root / f"pkg{i % 40}" / f"mod{i % 9}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(rnd.randbytes(size))
    (root / "var" / "empty").mkdir(parents=True)


def change_tree(src: Path, dst: Path, seed: int = 2) -> int:
    """Copy ``src`` to ``dst`` and change about 1 % of it; return the bytes changed."""
    shutil.copytree(src, dst, symlinks=True)
    rnd = random.Random(seed)
    files = sorted(p for p in dst.rglob("*") if p.is_file())
    changed = 0
    small = [p for p in files if p.stat().st_size < 400_000]
    for p in rnd.sample(small, max(1, len(files) // 100)):
        size = p.stat().st_size
        p.write_bytes(rnd.randbytes(size))
        changed += size
    for p in rnd.sample(small, 5):
        if p.exists():
            p.unlink()
    for i, p in enumerate(rnd.sample(small, 5)):
        if p.exists():
            p.rename(p.with_name(f"renamed{i}.bin"))
    for i in range(5):
        data = rnd.randbytes(rnd.randint(1000, 20_000))
        (dst / f"added{i}.bin").write_bytes(data)
        changed += len(data)
    big = max(files, key=lambda p: p.stat().st_size if p.exists() else 0)
    with big.open("r+b") as fh:
        fh.seek(big.stat().st_size // 2)
        fh.write(rnd.randbytes(64 * 1024))
    changed += 64 * 1024
    return changed


def nic(fl: Fleet, hosts: list[Host]) -> dict[str, tuple[int, int]]:
    """Return each host's eth0 (transmitted, received) bytes."""
    cmd = [
        "cat",
        "/sys/class/net/eth0/statistics/tx_bytes",
        "/sys/class/net/eth0/statistics/rx_bytes",
    ]

    def read(h: Host) -> tuple[int, int]:
        tx, rx = fl.run_in(h, cmd).stdout.split()
        return int(tx), int(rx)

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(read, hosts))
    return {h.host_string: n for h, n in zip(hosts, out, strict=True)}


def measured(fl: Fleet, hosts: list[Host], run: Any) -> dict[str, Any]:
    """Run ``run()``; return its wall time, the bytes the hosts sent and each peer received."""
    before, load_before = nic(fl, hosts), load()
    started = time.monotonic()
    extra = run() or {}
    seconds = time.monotonic() - started
    after = nic(fl, hosts)
    sent = {h: after[h][0] - before[h][0] for h in before}
    received = [after[h.host_string][1] - before[h.host_string][1] for h in hosts[1:]]
    seeder = hosts[0].host_string
    return {
        "wall_s": round(seconds, 3),
        "seeder_sent": sent[seeder],
        "fleet_sent": sum(sent.values()),
        "peer_received_max": max(received),
        "peer_received_mean": sum(received) // len(received),
        "load_before": load_before,
        "load_after": load(),
        **extra,
    }


def deploy(fl: Fleet, peers: list[Host], files_path: str, tag: str, extra: dict[str, Any]) -> Any:
    def run() -> dict[str, Any]:
        try:
            report = pipeline.distribute_files(
                context(fl, peers, {**extra, "files_path": files_path}), tag=tag
            )
        except DeployError as exc:
            # The peers' own reasons, so a failed run says why (and the next runs go on).
            print(f"deploy {tag} failed: {exc}", flush=True)
            for host, reason in sorted(exc.failures.items()):
                print(f"  {host}: {reason}", flush=True)
            return {"tag": tag, "failed": str(exc), "failures": exc.failures}
        failed = {h: r.reason for h, r in report.hosts.items() if not r.ok}
        if failed:
            return {"tag": tag, "failed": f"{len(failed)} peer(s) failed", "failures": failed}
        cpu = [r.cpu_seconds or 0.0 for r in report.hosts.values()]
        received = [r.from_seeder + r.from_peers for r in report.hosts.values()]
        return {
            "peer_cpu_s": round(sum(cpu), 2),
            "size": report.size,
            "payload_received": sum(received),
            "payload_received_max": max(received),
            # The seeder's BitTorrent payload, as its peers counted it: what of
            # ``seeder_sent`` (its NIC, which also carries the tracker's and SSH's
            # answers, since host 1 is the tracker too) was release data.
            "payload_from_seeder": sum(r.from_seeder for r in report.hosts.values()),
            "tag": tag,
        }

    return run


def rsync_push(fl: Fleet, peers: list[Host], src: str, base: str) -> Any:
    ssh = (
        f"ssh -i {fl.key_path} -o UserKnownHostsFile={fl.known_hosts_path} "
        "-o StrictHostKeyChecking=yes -o BatchMode=yes"
    )

    def run() -> dict[str, Any]:
        pushes = " ".join(
            f"rsync -a --delete --link-dest={DEST}/{base} -e '{ssh} -p {h.port}' "
            f'{src}/ {h.user}@{h.address}:{DEST}/rsync-new/ & pids="$pids $!";'
            for h in peers
        )
        # every push's own exit status: a bare `wait` says 0 even when rsync is missing
        script = f'pids=""; {pushes} for p in $pids; do wait "$p" || exit 1; done; echo done'
        out = fl.run_in(fl.hosts[0], ["sh", "-c", script], timeout=1800)
        if "done" not in out.stdout:
            raise RuntimeError(f"rsync push failed: {out.stderr}")
        return {}

    return run


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Bring up the fleet, run every measurement, tear it down; return the results."""
    extra: dict[str, Any] = {}
    wheel_dir = Path(tempfile.mkdtemp(prefix="fabmurder-delta-"))
    for path in install.wheel_set(settings(Context())).paths:
        shutil.copy(path, wheel_dir / path.name)
    extra["wheel_dir"] = str(wheel_dir)
    if args.libtorrent:
        extra["libtorrent"] = dict(args.libtorrent)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n": args.peers,
        "rate_mbit": args.rate,
        "size_mib": args.size_mib,
        "files": args.files,
        "small_files": args.small_files,
        "machine": "shared 2-core VM, loaded by other work (see load_before)",
        "libtorrent": dict(args.libtorrent),
    }
    fl = fleets.up(args.peers + 1, rate_mbit=args.rate, name=args.name)
    try:
        hosts = fl.hosts[: args.peers + 1]
        seeder, peers = hosts[0], hosts[1:]
        pipeline.setup(context(fl, peers, extra))
        only = set(args.only.split(",")) if args.only else set(MEASUREMENTS)
        results["changed_bytes"] = 0
        if only & {"full", "delta", "rsync"}:
            results["changed_bytes"] = on_host(
                fl,
                seeder,
                f"make_tree(B / 'v1', {args.size_mib}, {args.files})\n"
                "print(change_tree(B / 'v1', B / 'v2'))",
            )
        tree = {**extra, "layout": "tree"}
        stamp = int(time.time())
        v1, v2 = f"t1-{stamp}", f"t2-{stamp}"
        if only & {"full", "delta", "rsync"}:
            # delta and rsync start from the full deploy's release on every peer
            results["full"] = measured(fl, hosts, deploy(fl, peers, "/srv/build/v1", v1, tree))
            step(results, "full", args.out)
        if "delta" in only:
            results["delta"] = measured(fl, hosts, deploy(fl, peers, "/srv/build/v2", v2, tree))
            step(results, "delta", args.out)
        if "rsync" in only:
            results["rsync"] = measured(fl, hosts, rsync_push(fl, peers, "/srv/build/v2", v1))
            step(results, "rsync", args.out)
        shape(fl, None)
        few = peers[:4]
        few_hosts = [seeder, *few]
        if only & {"many_files_tree", "many_files_tar", "one_file"}:
            sizes = on_host(fl, seeder, f"print(make_small(B / 'small', {args.small_files}))")
            one = f"head -c {sizes} /dev/urandom > /srv/build/one/payload.bin"
            fl.run_in(seeder, ["sh", "-c", f"mkdir -p /srv/build/one && {one}"])
        runs = {
            "many_files_tree": ("/srv/build/small", f"m-{stamp}", tree),
            "many_files_tar": ("/srv/build/small", f"mt-{stamp}", extra),
            "one_file": ("/srv/build/one", f"o-{stamp}", extra),
        }
        for key, (path, tag, config) in runs.items():
            if key in only:
                # a measurement, not a deadline: let a slow run finish and be timed
                config = {**config, "timeout": MANY_FILES_TIMEOUT}
                results[key] = measured(fl, few_hosts, deploy(fl, few, path, tag, config))
                step(results, key, args.out)
    finally:
        fl.down()
    results["goals"] = goals(results)
    return results


def step(results: dict[str, Any], key: str, out: str) -> None:
    """Print one measurement and write the results so far (a run cut short keeps them)."""
    print(key, results[key], flush=True)
    Path(out).write_text(json.dumps(results, indent=2) + "\n")


def goals(r: dict[str, Any]) -> dict[str, float]:
    """Return the issue's goals as measured ratios (each goal's bound in its name).

    A goal whose runs were not made, or failed, is left out.
    """
    changed = r["changed_bytes"]
    out: dict[str, float] = {}
    for name, ratio in _ratios(r, changed):
        try:
            out[name] = ratio()
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    return out


def _ratios(r: dict[str, Any], changed: int) -> list[tuple[str, Any]]:
    def ok(key: str) -> dict[str, Any]:
        run = r[key]
        if "failed" in run:
            raise KeyError(key)
        return run

    def ratio(top: str, key: str, bottom: str | None, key2: str, digits: int = 2) -> Any:
        return lambda: round(ok(top)[key] / (ok(bottom)[key2] if bottom else changed), digits)

    return [
        (
            "delta_peer_payload_max_over_changed (<= 1.5)",
            ratio("delta", "payload_received_max", None, ""),
        ),
        (
            "delta_peer_received_max_over_changed (<= 1.5, plus metadata <= 1 % of S)",
            ratio("delta", "peer_received_max", None, ""),
        ),
        ("delta_seeder_sent_over_changed (<= 1.5)", ratio("delta", "seeder_sent", None, "")),
        (
            "delta_seeder_payload_over_changed (the seeder's release data alone)",
            ratio("delta", "payload_from_seeder", None, ""),
        ),
        ("rsync_seeder_sent_over_changed (about N)", ratio("rsync", "seeder_sent", None, "")),
        ("full_seeder_sent_over_size", ratio("full", "seeder_sent", "full", "size")),
        ("delta_wall_over_full (<= 0.25)", ratio("delta", "wall_s", "full", "wall_s", 3)),
        ("delta_wall_over_rsync (< 1)", ratio("delta", "wall_s", "rsync", "wall_s", 3)),
        (
            "many_files_tree_wall_over_one_file (<= 1.5)",
            ratio("many_files_tree", "wall_s", "one_file", "wall_s"),
        ),
        (
            "many_files_tar_wall_over_one_file",
            ratio("many_files_tar", "wall_s", "one_file", "wall_s"),
        ),
    ]


def make_small(root: Path, count: int) -> int:
    """Write ``count`` files of 1-8 KiB in ``count // 50`` directories; return their bytes."""
    rnd = random.Random(3)
    total = 0
    for i in range(count):
        d = root / f"d{i % max(1, count // 50)}"
        d.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(rnd.randint(1024, 8192))
        (d / f"m{i}.js").write_bytes(data)
        total += len(data)
    return total


def on_host(fl: Fleet, host: Host, call: str) -> int:
    """Run the tree makers on ``host`` (under /srv/build) with ``call``; return what it prints."""
    source = "\n\n".join(inspect.getsource(f) for f in (make_tree, change_tree, make_small))
    script = (
        "from __future__ import annotations\nimport random, shutil\nfrom pathlib import Path\n"
        f"from typing import Any\nMIB = {MIB}\nB = Path('/srv/build')\n{source}\n{call}\n"
    )
    out = fl.run_in(host, ["/usr/bin/python3", "-"], input=script, timeout=900)
    return int(out.stdout.strip().splitlines()[-1])


def plot(results: dict[str, Any], path: Path) -> None:
    """Draw wall time and bytes of full, delta and rsync, and the many-files runs' wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def made(keys: tuple[str, ...]) -> list[str]:
        return [n for n in keys if "wall_s" in results.get(n, {})]

    names = made(("full", "delta", "rsync"))
    many = made(("many_files_tree", "many_files_tar", "one_file"))
    if not names and not many:
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    a.bar(names, [results[n]["wall_s"] for n in names])
    a.set_ylabel("wall time (s)")
    a.set_title(f"N={results['n']} at {results['rate_mbit']:g} Mbit/s, {results['size_mib']} MiB")
    b.bar(names, [results[n]["seeder_sent"] / MIB for n in names], label="seeder sent")
    b.bar(names, [results[n]["fleet_sent"] / MIB for n in names], alpha=0.4, label="fleet sent")
    b.set_ylabel("MiB")
    b.legend()
    labels = {"many_files_tree": "tree", "many_files_tar": "tarball", "one_file": "one file"}
    c.bar([labels[n] for n in many], [results[n]["wall_s"] for n in many])
    c.set_ylabel("wall time (s)")
    c.set_title(f"{results['small_files']:,} files of 1-8 KiB, 4 uncapped peers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def setting(text: str) -> tuple[str, Any]:
    """Parse ``--libtorrent KEY=VALUE``: VALUE as an int or float when it reads as one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--libtorrent {text!r} is not KEY=VALUE")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON and plot."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.delta", description=__doc__)
    p.add_argument("--peers", type=int, default=16)
    p.add_argument("--rate", type=float, default=50.0, help="per-host cap in Mbit/s")
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--small-files", type=int, default=30000)
    p.add_argument("--name", default=os.environ.get("FABMURDER_FLEET_NAME", "delta"))
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated measurements to run (of {','.join(MEASUREMENTS)}; default all)",
    )
    p.add_argument(
        "--libtorrent",
        type=setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a murder.libtorrent setting for every deploy (repeatable), e.g. "
        "fabmurder_seeder_hold=5; a number when VALUE reads as one",
    )
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--plot", default=str(PLOT))
    p.add_argument(
        "--render", action="store_true", help="only draw the plot from the results in --out"
    )
    args = p.parse_args(argv)
    if args.render:
        plot(json.loads(Path(args.out).read_text()), Path(args.plot))
        print(f"wrote {args.plot}", flush=True)
        return
    results = run(args)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    plot(results, Path(args.plot))
    print(f"wrote {args.out} and {args.plot}", flush=True)


if __name__ == "__main__":
    main()
