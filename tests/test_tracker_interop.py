"""Real BitTorrent clients find each other through the tracker on loopback.

The seeder and the libtorrent peers are fabmurder's own host programs
(``python -m fabmurder create / seed / peer``), whose libtorrent profile
turns DHT, LSD, UPnP and NAT-PMP off: the tracker is their only way to
find each other. The independent client is Debian's ``aria2c``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless

from fabmurder.testing.proc import wait_until as wait_for
from fabmurder.tracker.client import TrackerProcess

pytestmark = pytest.mark.slow


def free_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def fabmurder(*args: str) -> list[str]:
    return [sys.executable, "-m", "fabmurder", *args]


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    assert isinstance(value, dict)
    return value


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[TrackerProcess]:
    allow = tmp_path / "tracker.allow"
    allow.write_text("")
    proc = TrackerProcess.start(["--interval", "5", "--allow-file", str(allow)])
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def release(tmp_path: Path, tracker: TrackerProcess) -> dict[str, Any]:
    """Pack 6 MiB of random data into a v1 torrent announcing to the tracker; allow it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload.bin").write_bytes(hashlib.sha256(b"seed").digest() * (6 * 1024 * 1024 // 32))
    (src / "README").write_text("fabmurder interop\n")
    out = tmp_path / "seed"
    announce = f"http://{tracker.host}:{tracker.port}/announce"
    done = subprocess.run(
        fabmurder(
            "create",
            "--src",
            str(src),
            "--out-dir",
            str(out),
            "--tag",
            "r1",
            "--announce",
            announce,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(done.stdout)
    allow = tmp_path / "tracker.allow"
    allow.write_text(info["info_hash"] + "\n")
    return info


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_seed(
    tmp_path: Path, release: dict[str, Any], procs: list[subprocess.Popen[bytes]], *extra: str
) -> Path:
    status = tmp_path / "seed.status.json"
    procs.append(
        subprocess.Popen(
            fabmurder(
                "seed",
                "--torrent",
                release["torrent"],
                "--save-path",
                str(Path(release["tarball"]).parent),
                "--bind",
                "127.0.0.2",
                "--port",
                str(free_port("127.0.0.2")),
                "--status-file",
                str(status),
                *extra,
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    wait_for(lambda: read_json(status).get("state") == "seeding", 30, "the seeder")
    return status


def swarm_stats(tracker: TrackerProcess, info_hash: str) -> dict[str, int]:
    stats = json.loads(tracker.get("/stats").body)["swarms"]
    return stats.get(info_hash, {})  # type: ignore[no-any-return]


def test_libtorrent_peers_find_each_other_through_the_tracker(
    tmp_path: Path,
    tracker: TrackerProcess,
    release: dict[str, Any],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # A slow seeder makes the peers trade pieces with each other.
    start_seed(tmp_path, release, processes, "--upload-rate-limit", str(2 * 1024 * 1024))
    statuses = []
    for n, addr in enumerate(("127.0.0.3", "127.0.0.4")):
        status = tmp_path / f"peer{n}.status.json"
        statuses.append(status)
        # A peer's save path is its private temp_path, made before it starts.
        (tmp_path / f"peer{n}").mkdir(mode=0o700)
        processes.append(
            subprocess.Popen(
                fabmurder(
                    "peer",
                    "--torrent",
                    release["torrent"],
                    "--save-path",
                    str(tmp_path / f"peer{n}"),
                    "--bind",
                    addr,
                    "--port",
                    str(free_port(addr)),
                    "--status-file",
                    str(status),
                    "--sha256",
                    release["sha256"],
                    "--dest",
                    str(tmp_path / f"dest{n}"),
                    "--tag",
                    "r1",
                    "--timeout",
                    "90",
                    "--seed-after",
                    "30",
                    "--seeder",
                    "127.0.0.2",
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    wait_for(lambda: swarm_stats(tracker, release["info_hash"]).get("peers") == 3, 30, "3 peers")
    for proc in processes[1:]:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    for n, status in enumerate(statuses):
        final = read_json(status)
        assert final["installed"] is True
        payload = tmp_path / f"dest{n}" / "r1" / "payload.bin"
        assert payload.read_bytes() == (tmp_path / "src" / "payload.bin").read_bytes()
    # Each peer got part of the release from the other, whom only the tracker named.
    assert all(read_json(s)["from_peers"] > 0 for s in statuses), [read_json(s) for s in statuses]
    stats = swarm_stats(tracker, release["info_hash"])
    assert stats["completed"] == 2


def test_aria2c_downloads_a_v1_torrent_through_the_tracker_from_a_libtorrent_seeder(
    tmp_path: Path,
    tracker: TrackerProcess,
    release: dict[str, Any],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    skip_unless(
        shutil.which("aria2c"), "aria2c is not installed (scripts/bootstrap.sh installs it)"
    )
    start_seed(tmp_path, release, processes)
    wait_for(lambda: swarm_stats(tracker, release["info_hash"]).get("seeders") == 1, 30, "seed")
    dest = tmp_path / "aria2"
    done = subprocess.run(
        [
            "aria2c",
            "--dir",
            str(dest),
            "--interface",
            "127.0.0.5",
            "--listen-port",
            str(free_port("127.0.0.5")),
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--bt-save-metadata=false",
            "--seed-time=0",
            "--bt-stop-timeout=60",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--file-allocation=none",
            release["torrent"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tarball = dest / "r1.tar"
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == release["sha256"]
    # aria2c never sends event=completed; left reaching 0 counts the completion.
    stats = wait_for(
        lambda: (s := swarm_stats(tracker, release["info_hash"])).get("completed") == 1 and s,
        15,
        "the completion to be counted",
    )
    assert stats["seeders"] == 1 and stats["leechers"] == 0
