"""Lab: one seeder, one peer on loopback, raw libtorrent: many files as v1 or v2 (issue #14).

``python docs/lab/lt_many_files.py --files 30000 --kind v2`` writes
``--files`` files of 1-8 KiB in 600 directories under ``--base`` (tmpfs by
default; kept for the next run), makes a torrent of them (``v2``: v2 only,
as :mod:`fabmurder.host.tree` makes a tree of up to V2_MAX_FILES files;
``v1``: v1 only, files end to end), and times one peer's download from one
seeder, each in its own process on 127.0.0.1. ``--files 1`` is one file of
138 MB. It prints one JSON line: wall seconds, each process's CPU seconds,
the pieces and files, and the load average. Not fabmurder's agent: no
tracker, no staging, no install; only libtorrent, to tell its per-file
cost from ours.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

import libtorrent as lt

SETTINGS = {
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "alert_mask": 0,
    "allow_multiple_connections_per_ip": True,
    # the agent's queues for a torrent of small blocks (profile.request_queues)
    "max_out_request_queue": 128,
    "max_allowed_in_request_queue": 128,
}


def make_tree(base: str, files: int) -> str:
    src = os.path.join(base, f"src{files}", "t")
    if os.path.isdir(src):
        return src
    rnd = random.Random(1)
    if files == 1:
        os.makedirs(src)
        with open(os.path.join(src, "big"), "wb") as fh:
            fh.write(rnd.randbytes(138 * 10**6))
        return src
    for i in range(files):
        d = os.path.join(src, f"d{i % 600:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as fh:
            fh.write(rnd.randbytes(rnd.randint(1024, 8192)))
    return src


def make_torrent(src: str, kind: str, piece: int) -> bytes:
    entries = []
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            path = os.path.join(dirpath, name)
            entries.append((os.path.relpath(path, os.path.dirname(src)), os.path.getsize(path)))
    entries.sort()
    flags = lt.create_torrent.v2_only if kind == "v2" else lt.create_torrent.v1_only
    creator = lt.create_torrent([lt.create_file_entry(p, s) for p, s in entries], piece, flags)
    lt.set_piece_hashes(creator, os.path.dirname(src))
    return bytes(lt.bencode(creator.generate()))


def session(port: int) -> lt.session:
    return lt.session(dict(SETTINGS, listen_interfaces=f"127.0.0.1:{port}"))


def params(torrent: str, save: str, seed: bool) -> lt.add_torrent_params:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save
    if seed:
        atp.flags |= lt.torrent_flags.seed_mode
    return atp


def run_seeder(torrent: str, save: str, port: int) -> None:
    ses = session(port)
    ses.add_torrent(params(torrent, save, True))
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps({"cpu": time.process_time()}), flush=True)


def run_peer(torrent: str, save: str, seeder_port: int, port: int, limit: float) -> None:
    ses = session(port)
    started = time.time()
    handle = ses.add_torrent(params(torrent, save, False))
    handle.connect_peer(("127.0.0.1", seeder_port))
    while not handle.status().is_seeding and time.time() - started < limit:
        time.sleep(0.05)
    done = handle.status().is_seeding
    print(json.dumps({"wall": time.time() - started, "cpu": time.process_time(), "done": done}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=30000)
    p.add_argument("--kind", choices=("v1", "v2"), default="v2")
    p.add_argument("--piece-size", type=int, default=65536)
    p.add_argument("--base", default="/dev/shm/fabmurder-lab-many-files")
    p.add_argument("--limit", type=float, default=600.0, help="the peer gives up after this")
    p.add_argument("--role", choices=("seed", "peer"), help=argparse.SUPPRESS)
    p.add_argument("--torrent", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "seed":
        return run_seeder(args.torrent, args.save, 6881)
    if args.role == "peer":
        return run_peer(args.torrent, args.save, 6881, 6882, args.limit)
    src = make_tree(args.base, args.files)
    data = make_torrent(src, args.kind, args.piece_size)
    torrent = os.path.join(args.base, f"{args.files}-{args.kind}.torrent")
    with open(torrent, "wb") as fh:
        fh.write(data)
    dest = os.path.join(args.base, "dest")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    me = [sys.executable, __file__, "--torrent", torrent, "--limit", str(args.limit)]
    load = os.getloadavg()[0]
    seeder = subprocess.Popen(
        me + ["--role", "seed", "--save", os.path.dirname(src)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert seeder.stdin is not None and seeder.stdout is not None
    seeder.stdout.readline()
    peer = subprocess.run(me + ["--role", "peer", "--save", dest], capture_output=True, text=True)
    seeder.stdin.write("end\n")
    seeder.stdin.flush()
    seeded = json.loads(seeder.stdout.readline())
    seeder.wait()
    got = json.loads(peer.stdout)
    ti = lt.torrent_info(data)
    print(
        json.dumps(
            {
                "files": args.files,
                "kind": args.kind,
                "piece_size": args.piece_size,
                "pieces": ti.num_pieces(),
                "torrent_files": ti.layout().num_files(),
                "torrent_bytes": len(data),
                "wall_s": round(got["wall"], 2),
                "peer_cpu_s": round(got["cpu"], 2),
                "seeder_cpu_s": round(seeded["cpu"], 2),
                "done": got["done"],
                "load_before": load,
                "load_after": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
