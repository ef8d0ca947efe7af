"""What checking a tree release costs a peer: fill, libtorrent's check, the rescan.

``python -m benchmarks.delta_check --dir /dev/shm/x --gib 1`` writes a tree
of about ``--gib`` GiB in 2,000 files (1,800 small, 190 medium, 10 large),
makes its torrent (:func:`fabmurder.host.tree.create`), fills a staging
copy from it as a peer fills one from its older release
(:func:`fabmurder.host.reuse.prefill`: reflink where the file system can,
else a copy), lets libtorrent check the copy (no ``seed_mode``) with each
``--threads`` value of ``hashing_threads``, and rescans it
(:func:`fabmurder.host.manifest.scan`, every root recomputed). It prints
one JSON object of seconds, and removes the tree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from typing import Any

from fabmurder.host import manifest, reuse, tree

PIECE = 256 * 1024  # what create picks for 1 GiB (metainfo.default_piece_size)


def write_tree(src: str, total: int) -> list[int]:
    """Write the tree; return its file sizes."""
    rnd = random.Random(1)
    sizes = [rnd.randint(500, 8000) for _ in range(1800)]
    sizes += [rnd.randint(40_000, 400_000) for _ in range(190)]
    sizes += [(total - sum(sizes)) // 10] * 10
    for i, size in enumerate(sizes):
        here = os.path.join(src, f"pkg{i % 40}", f"mod{i % 9}")
        os.makedirs(here, exist_ok=True)
        with open(os.path.join(here, f"f{i}.bin"), "wb") as fh:
            left = size
            while left:
                n = min(left, 1 << 20)
                fh.write(os.urandom(n))
                left -= n
    return sizes


def check(raw: bytes, save_path: str, threads: int) -> float:
    """Return the seconds libtorrent takes to check the files under ``save_path``."""
    import libtorrent as lt

    ses = lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "hashing_threads": threads,
        }
    )
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(raw)
    params.save_path = save_path
    off = lt.torrent_flags.auto_managed | lt.torrent_flags.paused | lt.torrent_flags.seed_mode
    params.flags &= ~off
    started = time.monotonic()
    handle = ses.add_torrent(params)
    while not handle.status().is_seeding:
        ses.wait_for_alert(50)
        ses.pop_alerts()
        if time.monotonic() - started > 600:
            raise SystemExit("the check took over 10 minutes")
    seconds = time.monotonic() - started
    ses.remove_torrent(handle)
    return round(seconds, 2)


def run(base: str, gib: float, threads: list[int]) -> dict[str, Any]:
    shutil.rmtree(base, ignore_errors=True)
    src = os.path.join(base, "v1")
    sizes = write_tree(src, int(gib * 1024**3))
    out: dict[str, Any] = {"bytes": sum(sizes), "files": len(sizes), "piece_size": PIECE}
    started, cpu = time.monotonic(), time.process_time()
    meta, listed = tree.create(
        src, os.path.join(base, "r.torrent"), "r", "http://127.0.0.1:1/a", PIECE
    )
    out["create_s"] = round(time.monotonic() - started, 2)
    out["create_cpu_s"] = round(time.process_time() - cpu, 2)
    out["torrent_bytes"] = len(meta.raw)
    stage = os.path.join(base, "stage", "r")
    for entry in listed["entries"]:
        if entry["type"] == "dir":
            os.makedirs(os.path.join(stage, entry["path"]), exist_ok=True)
    sources = reuse.Sources()
    for entry in manifest.files(listed):
        sources.roots.setdefault(entry["root"], []).append(os.path.join(src, entry["path"]))
    started = time.monotonic()
    filled = reuse.prefill(listed, stage, sources)
    out["fill_s"] = round(time.monotonic() - started, 2)
    out["fill_reflinked_files"] = filled.reflinked
    out["check_s"] = [[n, check(meta.raw, os.path.dirname(stage), n)] for n in threads]
    started, cpu = time.monotonic(), time.process_time()
    manifest.scan(stage)
    out["rescan_s"] = round(time.monotonic() - started, 2)
    out["rescan_cpu_s"] = round(time.process_time() - cpu, 2)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(base, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.delta_check", description=__doc__)
    p.add_argument("--dir", required=True, help="scratch directory (removed first and after)")
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--threads", default="1,2", help="hashing_threads values, comma-separated")
    args = p.parse_args(argv)
    threads = [int(n) for n in args.threads.split(",")]
    print(json.dumps({"load_before": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    print(json.dumps(run(args.dir, args.gib, threads)), flush=True)


if __name__ == "__main__":
    main()
