"""Benchmark the tracker: announces per second, latency and memory per peer.

``python -m benchmarks.tracker [--peers 10000] [--numwant 50] [--duration S]
[--connections C]`` starts the tracker as its own process pinned to one CPU,
fills one swarm with ``--peers`` peers spread over /24 racks, then loads it
from a separate client process pinned to another CPU, over loopback, with
keep-alive clients and with a new connection per announce. Every announce is
a re-announce of a swarm member asking for a compact list of ``--numwant``
peers. Results go to ``docs/tracker-bench.json`` and a table on stdout.

The tracker's CPU time is read from ``/proc`` around each run: when it stays
below one full core the client was the limit, and announces per tracker
CPU-second is the better estimate of what one core can serve.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import selectors
import socket
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import bencodepy

from fabmurder.tracker.client import TrackerProcess, announce_target, connect, read_response

INFO_HASH = bytes.fromhex("fa" * 20)
PEERS_PER_RACK = 250


def peer_id(n: int) -> bytes:
    return b"-FMBNCH-" + n.to_bytes(12, "big")


def peer_ip(n: int) -> str:
    rack, host = divmod(n, PEERS_PER_RACK)
    return f"10.{rack // 256}.{rack % 256}.{host + 1}"


def request(n: int, numwant: int, keep_alive: bool) -> bytes:
    target = announce_target(
        INFO_HASH,
        peer_id(n),
        6881,
        left=0 if n % 10 == 0 else 1000 + n,  # one seeder in ten
        numwant=numwant,
        compact=1,
        ip=peer_ip(n),
    )
    connection = b"" if keep_alive else b"Connection: close\r\n"
    return b"GET %s HTTP/1.1\r\nHost: tracker\r\n%s\r\n" % (target.encode(), connection)


def fill(tracker: TrackerProcess, peers: int, numwant: int) -> float:
    """Announce every peer once over pipelined keep-alive connections; return seconds."""
    started = time.monotonic()
    batch = 200
    with connect(tracker.host, tracker.port) as sock:
        buf = b""
        for first in range(0, peers, batch):
            ns = range(first, min(peers, first + batch))
            sock.sendall(b"".join(request(n, numwant, True) for n in ns))
            for _ in ns:
                response, buf = read_response(sock, buf)
                reply = bencodepy.decode(response.body)
                if b"failure reason" in reply:
                    raise RuntimeError(f"fill refused: {reply[b'failure reason']!r}")
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds of a process, from ``/proc``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _response_length(buf: bytes) -> int:
    """Return the full length of the first response in ``buf``, or -1 if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return -1
    start = buf.find(b"Content-Length: ", 0, end) + 16
    length = int(buf[start : buf.find(b"\r\n", start)])
    total = end + 4 + length
    return total if len(buf) >= total else -1


def load(
    host: str,
    port: int,
    requests: list[bytes],
    connections: int,
    duration: float,
    keep_alive: bool,
    pipeline: int,
    cpu: int | None,
    out: Connection,
) -> None:
    """Client process: keep ``connections`` x ``pipeline`` announces in flight for a while."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sel = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = 0
    next_request = 0
    sent_at: dict[socket.socket, deque[float]] = {}
    bufs: dict[socket.socket, bytes] = {}
    clock = time.perf_counter

    def send(sock: socket.socket, since: float | None = None) -> None:
        nonlocal next_request
        when = clock() if since is None else since
        sock.send(requests[next_request])
        next_request = (next_request + 1) % len(requests)
        sent_at[sock].append(when)

    connecting: dict[socket.socket, float] = {}

    def open_one() -> None:
        # Non-blocking connect, so many handshakes are in flight at once; a
        # new connection's latency includes its handshake.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connecting[sock] = clock()
        sent_at[sock] = deque()
        bufs[sock] = b""
        sock.connect_ex((host, port))
        sel.register(sock, selectors.EVENT_WRITE)

    def connected(sock: socket.socket) -> None:
        since = connecting.pop(sock)
        sel.modify(sock, selectors.EVENT_READ)
        send(sock, since)
        for _ in range(pipeline - 1 if keep_alive else 0):
            send(sock)

    def close_one(sock: socket.socket) -> None:
        sel.unregister(sock)
        del sent_at[sock], bufs[sock]
        sock.close()

    started = clock()
    deadline = started + duration
    for _ in range(connections):
        open_one()
    while sent_at:
        now = clock()
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock in connecting:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    errors += 1
                    del connecting[sock]
                    close_one(sock)
                    open_one()
                else:
                    connected(sock)
                continue
            try:
                chunk = sock.recv(262144)
            except BlockingIOError:
                continue
            except ConnectionError:
                chunk = b""
            buf = bufs[sock] + chunk
            done_at = clock()
            while (length := _response_length(buf)) > 0:
                if not buf.startswith(b"HTTP/1.1 200"):
                    errors += 1
                latencies.append(done_at - sent_at[sock].popleft())
                buf = buf[length:]
                if keep_alive and done_at < deadline:
                    send(sock)
            bufs[sock] = buf
            if not chunk or (keep_alive and done_at >= deadline and not sent_at[sock]):
                if sent_at[sock]:
                    errors += 1
                close_one(sock)
                if not keep_alive and done_at < deadline:
                    open_one()
        if now > deadline + 10:
            errors += len(sent_at)
            break
    elapsed = clock() - started
    out.send({"latencies": latencies, "errors": errors, "elapsed": elapsed})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_load(
    tracker: TrackerProcess, args: argparse.Namespace, keep_alive: bool, cpu: int | None
) -> dict[str, Any]:
    requests = [request(n, args.numwant, keep_alive) for n in range(0, args.peers, 7)]
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    client = ctx.Process(
        target=load,
        args=(
            tracker.host,
            tracker.port,
            requests,
            args.connections,
            args.duration,
            keep_alive,
            args.pipeline if keep_alive else 1,
            cpu,
            child,
        ),
    )
    cpu_before = cpu_seconds(tracker.process.pid)
    client.start()
    result = parent.recv()
    client.join()
    tracker_cpu = cpu_seconds(tracker.process.pid) - cpu_before
    latencies = result["latencies"]
    count = len(latencies)
    return {
        "mode": "keep-alive" if keep_alive else "new connection per announce",
        "connections": args.connections,
        "pipeline": args.pipeline if keep_alive else 1,
        "announces": count,
        "seconds": round(result["elapsed"], 3),
        "announces_per_s": round(count / result["elapsed"]),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "errors": result["errors"],
        "tracker_cpu_share": round(tracker_cpu / result["elapsed"], 3),
        "announces_per_tracker_cpu_s": round(count / tracker_cpu) if tracker_cpu else None,
    }


def check_reply(tracker: TrackerProcess, numwant: int) -> int:
    """Return how many peers one announce gets (sanity check of the loaded swarm)."""
    with connect(tracker.host, tracker.port) as sock:
        sock.sendall(request(1, numwant, False))
        response, _ = read_response(sock)
    reply = bencodepy.decode(response.body)
    return len(reply[b"peers"]) // 6


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``docs/tracker-bench.json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracker", description=__doc__)
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--numwant", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32, help="announces in flight")
    parser.add_argument(
        "--pipeline", type=int, default=4, help="requests in flight per keep-alive connection"
    )
    parser.add_argument("--out", default="docs/tracker-bench.json")
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))
    tracker_cpu = cpus[0]
    client_cpu = cpus[1] if len(cpus) > 1 else None
    tracker = TrackerProcess.start(
        [
            "--accept-ip-param",
            "--max-peers-per-swarm",
            str(args.peers * 2),
            "--numwant-cap",
            str(max(50, args.numwant)),
            "--max-connections",
            str(max(4096, args.connections * 4)),
            # every client speaks from this machine's one address
            "--max-connections-per-ip",
            str(max(4096, args.connections * 4)),
        ],
        cpu=tracker_cpu,
    )
    try:
        rss_empty = tracker.rss_bytes()
        fill_seconds = fill(tracker, args.peers, args.numwant)
        rss_full = tracker.rss_bytes()
        peers_in_reply = check_reply(tracker, args.numwant)
        runs = [
            run_load(tracker, args, keep_alive=True, cpu=client_cpu),
            run_load(tracker, args, keep_alive=False, cpu=client_cpu),
        ]
        stats = json.loads(tracker.get("/stats").body)["swarms"][INFO_HASH.hex()]
    finally:
        code = tracker.stop()
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "tracker_pinned_to_cpu": tracker_cpu,
            "client_pinned_to_cpu": client_cpu,
            # other work on the machine skews the figures; this says how much
            "load_average_1min_after": round(os.getloadavg()[0], 2),
        },
        "parameters": {
            "peers": args.peers,
            "numwant": args.numwant,
            "duration_s": args.duration,
            "connections": args.connections,
            "pipeline": args.pipeline,
            "racks": -(-args.peers // PEERS_PER_RACK),
        },
        "swarm": stats,
        "peers_in_reply": peers_in_reply,
        "fill_seconds": round(fill_seconds, 3),
        "memory": {
            "rss_empty_bytes": rss_empty,
            "rss_full_bytes": rss_full,
            "bytes_per_peer": round((rss_full - rss_empty) / args.peers),
        },
        "runs": runs,
        "tracker_exit_code": code,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)
    return 0 if code == 0 and peers_in_reply == args.numwant else 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _print_table(results: dict[str, Any]) -> None:
    p = results["parameters"]
    mem = results["memory"]
    print(
        f"tracker benchmark (load average {results['machine']['load_average_1min_after']}): "
        f"{p['peers']} peers in {p['racks']} racks, numwant {p['numwant']}, "
        f"{p['connections']} connections, {p['duration_s']:g} s per run"
    )
    empty_kib, full_kib = mem["rss_empty_bytes"] // 1024, mem["rss_full_bytes"] // 1024
    print(
        f"memory: {mem['bytes_per_peer']} bytes per peer "
        f"(RSS {empty_kib} KiB empty, {full_kib} KiB full)"
    )
    header = (
        f"{'mode':<30} {'ann/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu':>6} {'ann/cpu-s':>10} {'err':>4}"
    )
    print(header)
    print("-" * len(header))
    for run in results["runs"]:
        print(
            f"{run['mode']:<30} {run['announces_per_s']:>8} {run['p50_ms']:>8.3f} "
            f"{run['p99_ms']:>8.3f} {run['tracker_cpu_share']:>6.2f} "
            f"{run['announces_per_tracker_cpu_s'] or 0:>10} {run['errors']:>4}"
        )


if __name__ == "__main__":
    sys.exit(main())
