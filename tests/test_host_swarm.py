"""The seed and peer agents with real libtorrent and the real tracker on loopback.

Each node listens on its own 127.0.0.x address, as each host would on its
fleet address.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless
from test_host_artifact import make_release_tree, tree_signature

from fabmurder.host import statusfile
from fabmurder.testing.hostcli import run as fab
from fabmurder.testing.proc import wait_until as wait_for

_addresses = itertools.count(20)


def next_address() -> str:
    """Return a fresh loopback address for one node."""
    n = next(_addresses)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def free_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def state_of(status_file: Path) -> str | None:
    try:
        return str(statusfile.read_status(str(status_file))["state"])
    except statusfile.StatusError:
        return None


@dataclass
class Tracker:
    url: str
    allow_file: Path

    def allow(self, info_hash: str) -> None:
        result = fab("allow", "--file", str(self.allow_file), "--add", info_hash)
        assert result.returncode == 0, result.stderr


class DeployTracker(Tracker):
    """A tracker with a token of its own: each release is registered under a deploy token."""

    def allow(self, info_hash: str) -> None:
        token = self.url.rsplit("/", 1)[1]
        result = fab("allow", "--file", str(self.allow_file), "--add", info_hash, "--token", token)
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    """The project's tracker, started as a daemon with an allow-list."""
    root = tmp_path_factory.mktemp("tracker")
    port = free_port("127.0.0.1")
    started = fab(
        "daemon", "start", "--pid-file", str(root / "tracker.pid"), "--log",
        str(root / "tracker.log"), "--", "tracker", "--bind", "127.0.0.1", "--port", str(port),
        "--interval", "2", "--allow-file", str(root / "tracker.allow"),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield Tracker(f"http://127.0.0.1:{port}/announce", root / "tracker.allow")
    finally:
        fab("daemon", "stop", "--pid-file", str(root / "tracker.pid"))


@dataclass
class Release:
    tag: str
    src: Path
    seed_dir: Path
    torrent: Path
    sha256: str
    info_hash: str
    size: int


def create_release(tmp_path: Path, tracker: Tracker, tag: str = "v1") -> Release:
    src = make_release_tree(tmp_path / "src", big=2_500_000)
    seed_dir = tmp_path / "seeder"
    result = fab(
        "create", "--src", str(src), "--out-dir", str(seed_dir), "--tag", tag,
        "--announce", tracker.url, "--piece-size", "65536",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    tracker.allow(out["info_hash"])
    return Release(
        tag, src, seed_dir, Path(out["torrent"]), out["sha256"], out["info_hash"], out["size"]
    )


class Node:
    """One seed or peer process, with its own address, temp dir and status file.

    ``{dest}`` in ``extra`` stands for the node's destination directory.
    """

    def __init__(
        self, root: Path, role: str, release: Release, extra: list[str], addr: str | None = None
    ) -> None:
        self.addr = addr or next_address()
        self.role = role
        base = root / f"{role}-{self.addr}"
        self.temp, self.dest = base / "tmp", base / "dest"
        self.temp.mkdir(parents=True)
        self.status_file = self.temp / f"{role}-{release.tag}.status.json"
        if role == "seed":
            save, torrent = release.seed_dir, release.torrent
        else:
            save, torrent = self.temp, self.temp / f"{release.tag}.torrent"
            torrent.write_bytes(release.torrent.read_bytes())
        args = [
            sys.executable, "-m", "fabmurder", role, "--torrent", str(torrent),
            "--save-path", str(save), "--bind", self.addr, "--port", str(free_port(self.addr)),
            "--status-file", str(self.status_file),
            *(arg.replace("{dest}", str(self.dest)) for arg in extra),
        ]  # fmt: skip
        self.log = open(self.temp / f"{role}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict[str, Any]:
        return statusfile.read_status(str(self.status_file))

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.role} on {self.addr} still running after {timeout}s")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Every node a test starts; all are stopped afterwards."""
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def start_seed(nodes: list[Node], root: Path, release: Release, *extra: str) -> Node:
    node = Node(root, "seed", release, list(extra))
    nodes.append(node)
    return node


def start_peer(
    nodes: list[Node],
    root: Path,
    release: Release,
    seeder: Node | None,
    addr: str | None = None,
    **options: str,
) -> Node:
    """Start a peer; ``options`` override its flags (``seed_after="0"``)."""
    flags = {
        "sha256": release.sha256,
        "tag": release.tag,
        "timeout": "60",
        "seed_after": "30",
        "dest": "{dest}",
        **options,
    }
    if seeder is not None:
        flags["seeder"] = seeder.addr
    extra = [item for k, v in flags.items() for item in (f"--{k.replace('_', '-')}", v)]
    node = Node(root, "peer", release, extra, addr)
    nodes.append(node)
    return node


def seeding(node: Node, timeout: float = 20) -> None:
    wait_for(lambda: state_of(node.status_file) == "seeding", timeout, f"{node.role} to seed")


def test_three_peers_download_verify_and_install_identical_trees(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    seed = start_seed(nodes, tmp_path, release)
    seeding(seed)
    # --seed-after outlasts any wait here: a peer that exits at all left because
    # the tracker showed no leechers, not because its seeding time ran out.
    peers = [start_peer(nodes, tmp_path, release, seed, seed_after="3600") for _ in range(3)]
    for peer in peers:
        assert peer.wait(120) == 0, peer.output()
    for peer in peers:
        assert tree_signature(peer.dest / release.tag) == tree_signature(release.src)
        # the marker next to the release records the artifact it came from
        assert sorted(os.listdir(peer.dest)) == [f".{release.tag}.sha256", release.tag]
        assert (peer.dest / f".{release.tag}.sha256").read_text() == release.sha256 + "\n"
        status = peer.status()
        assert status["state"] == "stopped" and status["installed"] is True
        assert status["error"] is None
        assert status["done"] == status["total"] == release.size
        assert status["from_seeder"] + status["from_peers"] >= release.size
        assert status["downloaded_at"] <= status["installed_at"] <= status["updated_at"]
    stats = json.loads(fab("stats", "--url", tracker.url.replace("announce", "stats")).stdout)
    assert stats["swarms"][release.info_hash]["completed"] >= 3
    assert seed.status()["uploaded"] > 0
    seed.proc.send_signal(signal.SIGTERM)
    assert seed.wait(15) == 0
    assert seed.status()["state"] == "stopped"


def test_a_sha256_mismatch_fails_the_peer_with_nothing_at_the_final_path(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    seed = start_seed(nodes, tmp_path, release)
    seeding(seed)
    peer = start_peer(nodes, tmp_path, release, seed, sha256="ab" * 32)
    assert peer.wait(60) == 1
    status = peer.status()
    assert status["state"] == "failed" and status["installed"] is False
    assert "SHA-256 mismatch" in status["error"]
    assert not peer.dest.exists() or os.listdir(peer.dest) == []


def test_a_peer_times_out_on_a_dead_seeder_and_says_how_far_it_got(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    peer = start_peer(nodes, tmp_path, release, None, timeout="3")
    assert peer.wait(30) == 1
    status = peer.status()
    assert status["state"] == "failed"
    assert status["error"] == "timed out after 3s at 0.0%"
    assert "timed out after 3s" in peer.output()
    assert not peer.dest.exists() or os.listdir(peer.dest) == []


def test_a_peer_started_long_before_the_seeder_counts_its_timeout_from_its_first_byte(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    # The control side starts every peer before the seeder: in a large fleet the
    # first peers wait out the whole start phase, which must not use up their timeout.
    release = create_release(tmp_path, tracker)
    early = start_peer(
        nodes, tmp_path, release, None, timeout="4", first_byte_wait="90", seed_after="0"
    )
    wait_for(lambda: state_of(early.status_file) == "downloading", 30, "the peer to start")
    with pytest.raises(subprocess.TimeoutExpired):
        early.proc.wait(7)  # still waiting, well past its 4 s timeout
    seed = start_seed(nodes, tmp_path, release)
    assert early.wait(60) == 0, early.output()
    assert tree_signature(early.dest / release.tag) == tree_signature(release.src)
    seed.proc.send_signal(signal.SIGTERM)
    assert seed.wait(15) == 0


def test_a_peer_that_never_gets_a_byte_fails_when_its_first_byte_wait_runs_out(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    peer = start_peer(nodes, tmp_path, release, None, timeout="600", first_byte_wait="3")
    assert peer.wait(30) == 1
    assert peer.status()["error"] == "timed out after 3s at 0.0%"


def test_a_corrupt_seeder_copy_is_caught_before_the_seeder_reports_ready(
    tmp_path: Path, tracker: Tracker
) -> None:
    release = create_release(tmp_path, tracker)
    tarball = release.seed_dir / f"{release.tag}.tar"
    with open(tarball, "r+b") as fh:
        fh.seek(release.size // 2)
        byte = fh.read(1)
        fh.seek(release.size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    addr = next_address()
    status_file = tmp_path / "seed.status.json"
    result = fab(
        "daemon", "start", "--pid-file", str(tmp_path / "seed.pid"), "--log",
        str(tmp_path / "seed.log"), "--", "seed", "--torrent", str(release.torrent),
        "--save-path", str(release.seed_dir), "--bind", addr, "--port", str(free_port(addr)),
        "--status-file", str(status_file),
    )  # fmt: skip
    assert result.returncode == 1
    assert "does not match the torrent" in result.stderr
    assert "65536 of" in result.stderr  # exactly one 64 KiB piece is bad
    assert statusfile.read_status(str(status_file))["state"] == "failed"
    assert not (tmp_path / "seed.pid").exists()


def test_only_allowed_addresses_can_fetch_pieces_from_the_seeder(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    # The seeder's address is reserved first so the allowed peer's is known.
    allowed_peer_addr = next_address()
    seed = start_seed(nodes, tmp_path, release, "--allow", f"{allowed_peer_addr}/32")
    seeding(seed)
    outsider = start_peer(nodes, tmp_path, release, seed, timeout="4", seed_after="0")
    assert outsider.wait(30) == 1
    assert outsider.status()["error"] == "timed out after 4s at 0.0%"
    assert outsider.status()["from_seeder"] == 0
    insider = start_peer(nodes, tmp_path, release, seed, addr=allowed_peer_addr, seed_after="0")
    assert insider.addr == allowed_peer_addr
    assert insider.wait(60) == 0, insider.output()
    assert insider.status()["from_seeder"] >= release.size


def test_a_peer_refuses_at_once_when_the_release_is_already_installed(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    addr = next_address()
    existing = tmp_path / f"peer-{addr}" / "dest" / release.tag
    existing.mkdir(parents=True)
    (existing / "old").write_text("the release already there")
    peer = start_peer(nodes, tmp_path, release, None, addr=addr)
    assert peer.wait(30) == 1
    assert "already exists" in peer.status()["error"]
    assert peer.status()["done"] == 0
    assert os.listdir(existing) == ["old"]


@pytest.mark.parametrize("recorded", ["same", "other"])
def test_a_release_installed_from_the_same_artifact_is_kept_and_nothing_is_downloaded(
    tmp_path: Path, tracker: Tracker, nodes: list[Node], recorded: str
) -> None:
    """A rerun: the marker names this artifact (exit 0, no seeder needed), or another (exit 1)."""
    release = create_release(tmp_path, tracker)
    addr = next_address()
    dest = tmp_path / f"peer-{addr}" / "dest"
    (dest / release.tag).mkdir(parents=True)
    (dest / release.tag / "app").write_text("installed earlier")
    digest = release.sha256 if recorded == "same" else "0" * 64
    (dest / f".{release.tag}.sha256").write_text(digest + "\n")
    peer = start_peer(nodes, tmp_path, release, None, addr=addr)
    status = peer.status() if peer.wait(30) == 0 else None
    if recorded == "same":
        assert status is not None and status["installed"] is True, peer.output()
        assert status["from_seeder"] == status["from_peers"] == 0
    else:
        assert peer.proc.returncode == 1
        assert "already exists" in peer.status()["error"]
    assert os.listdir(dest / release.tag) == ["app"]


def test_a_peer_stopped_before_installing_exits_1_and_says_so(
    tmp_path: Path, tracker: Tracker, nodes: list[Node]
) -> None:
    release = create_release(tmp_path, tracker)
    peer = start_peer(nodes, tmp_path, release, None)
    wait_for(lambda: state_of(peer.status_file) == "downloading", 20, "the peer to start")
    peer.proc.send_signal(signal.SIGTERM)
    assert peer.wait(15) == 1
    status = peer.status()
    assert status["state"] == "stopped" and status["installed"] is False
    assert status["error"] == "stopped before the release was installed"
    assert not peer.dest.exists() or os.listdir(peer.dest) == []


@pytest.fixture
def corrupt_seeder(tmp_path: Path) -> Iterator[Callable[[Release], str]]:
    """A hostile node: seeds the right torrent, then has its bytes tampered with underneath.

    libtorrent hashes pieces before it first serves them (even in seed
    mode), so the data is corrupted on disk only after the check passed:
    the node then really sends bad pieces, as a faulty disk or a liar would.
    """
    sessions: list[Any] = []

    def start(release: Release) -> str:
        import libtorrent as lt

        from fabmurder.host import profile

        evil = tmp_path / "evil"
        evil.mkdir()
        tarball = evil / f"{release.tag}.tar"
        tarball.write_bytes((release.seed_dir / f"{release.tag}.tar").read_bytes())
        addr = next_address()
        ses = lt.session(profile.settings(addr, free_port(addr)))
        ses.set_peer_class_filter(profile.peer_class_filter())
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(release.torrent.read_bytes())
        params.save_path = str(evil)
        params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        handle = ses.add_torrent(params)
        sessions.append(ses)
        wait_for(lambda: handle.status().is_seeding, 20, "the hostile node to pass its check")
        with open(tarball, "r+b") as fh:
            data = bytearray(fh.read())
            for at in range(0, len(data), 4096):
                data[at] ^= 0xFF
            fh.seek(0)
            fh.write(bytes(data))
        return addr

    yield start
    sessions.clear()


def test_pieces_from_a_corrupt_peer_fail_their_hash_and_the_release_still_installs(
    tmp_path: Path, tracker: Tracker, nodes: list[Node], corrupt_seeder: Callable[[Release], str]
) -> None:
    release = create_release(tmp_path, tracker)
    rate = 1_000_000
    seed = start_seed(nodes, tmp_path, release, "--upload-rate-limit", str(rate))
    seeding(seed)
    corrupt_seeder(release)
    stats_url = tracker.url.replace("announce", "stats")

    def two_seeders() -> bool:
        stats = json.loads(fab("stats", "--url", stats_url).stdout)
        return bool(stats["swarms"].get(release.info_hash, {}).get("seeders", 0) >= 2)

    wait_for(two_seeders, 20, "the corrupt node to announce")
    peer = start_peer(nodes, tmp_path, release, seed, seed_after="0")
    assert peer.wait(60) == 0, peer.output()
    status = peer.status()
    assert tree_signature(peer.dest / release.tag) == tree_signature(release.src)
    assert status["hash_failures"] >= 1
    assert status["from_peers"] > 0  # the corrupt node really did send data
    # Every good byte came from the rate-limited seeder: the limit held on loopback too.
    assert status["from_seeder"] >= release.size
    # The clock is the behaviour here: a rate limit is a lower bound on the time,
    # which a slow machine only lengthens (0.7: slack for the limiter's bursts).
    assert status["downloaded_at"] - status["started_at"] >= 0.7 * release.size / rate


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a 1 MiB tmpfs (needs root; fails rather than skips under CI).

    Mode 0700, as a temp_path must be (a tmpfs is 1777 by default, which the
    peer refuses as a directory others could write).
    """
    mount = tmp_path / "tiny"
    mount.mkdir()
    skip_unless(os.geteuid() == 0, "needs root to mount a tmpfs")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_peer_whose_disk_fills_fails_cleanly_with_the_reason(
    tmp_path: Path, tracker: Tracker, nodes: list[Node], tiny_disk: Path
) -> None:
    release = create_release(tmp_path, tracker)
    seed = start_seed(nodes, tmp_path, release)
    seeding(seed)
    peer = start_peer(nodes, tmp_path, release, seed, save_path=str(tiny_disk))
    assert peer.wait(60) == 1, peer.output()
    status = peer.status()
    assert status["state"] == "failed" and status["installed"] is False
    assert "No space left on device" in status["error"], status["error"]
    assert not peer.dest.exists() or os.listdir(peer.dest) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [('{"no_such_setting": 1}', "no_such_setting"), ('{"enable_dht": "yes"}', "invalid")],
)
def test_a_bad_settings_override_is_a_usage_error_not_a_traceback(
    tmp_path: Path, tracker: Tracker, settings: str, message: str
) -> None:
    release = create_release(tmp_path, tracker)
    addr = next_address()
    result = fab(
        "seed", "--torrent", str(release.torrent), "--save-path", str(release.seed_dir),
        "--bind", addr, "--port", str(free_port(addr)),
        "--status-file", str(tmp_path / "s.json"), "--settings", settings,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_finished_peer_leaves_promptly_through_a_token_tracker(
    tmp_path: Path, nodes: list[Node]
) -> None:
    """Under a deploy token, the scrape (``/scrape/<deploy token>``) still tells the peer to go."""
    port = free_port("127.0.0.1")
    started = fab(
        "daemon", "start", "--pid-file", str(tmp_path / "tracker.pid"), "--log",
        str(tmp_path / "tracker.log"), "--", "tracker", "--bind", "127.0.0.1", "--port",
        str(port), "--interval", "2", "--token", "s3cret-token",
        "--allow-file", str(tmp_path / "a"),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        token_tracker = DeployTracker(
            f"http://127.0.0.1:{port}/announce/deploy-tok", tmp_path / "a"
        )
        release = create_release(tmp_path, token_tracker)
        seed = start_seed(nodes, tmp_path, release)
        seeding(seed)
        # As above: with an hour to seed, only the scrape's "no leechers" ends it.
        peer = start_peer(nodes, tmp_path, release, seed, seed_after="3600")
        assert peer.wait(120) == 0, peer.output()
        assert "scrape failed" not in peer.output()
    finally:
        fab("daemon", "stop", "--pid-file", str(tmp_path / "tracker.pid"))


def test_a_seeder_without_its_tarball_says_it_is_missing(tmp_path: Path, tracker: Tracker) -> None:
    release = create_release(tmp_path, tracker)
    (release.seed_dir / f"{release.tag}.tar").unlink()
    addr = next_address()
    status_file = tmp_path / "new" / "dir" / "seed.status.json"
    result = fab(
        "seed", "--torrent", str(release.torrent), "--save-path", str(release.seed_dir),
        "--bind", addr, "--port", str(free_port(addr)), "--status-file", str(status_file),
    )  # fmt: skip
    assert result.returncode == 1
    assert "is missing" in result.stderr and "Traceback" not in result.stderr
    assert statusfile.read_status(str(status_file))["state"] == "failed"
