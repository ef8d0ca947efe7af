"""Tree releases on loopback with real libtorrent: create --layout tree, seed, peers refilled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_tracker_interop import fabmurder, free_port, processes, read_json, tracker

from fabmurder.host import manifest, metainfo, tree
from fabmurder.testing.proc import wait_until
from fabmurder.tracker.client import TrackerProcess

#: the loopback tracker and the processes' clean-up, as the interop tests have them
__all__ = ["processes", "tracker"]

pytestmark = pytest.mark.slow


def build(root: Path, version: int) -> None:
    """A small tree: sources, a 1 MiB library, an executable, a symlink, empty dir and file."""
    (root / "lib").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "empty").mkdir()
    (root / "empty-file").write_bytes(b"")
    for i in range(40):
        (root / "lib" / f"mod{i}.py").write_bytes(f"m{i}\n".encode() * 300)
    (root / "lib" / "big.so").write_bytes(bytes(range(256)) * 4096)
    (root / "bin" / "run").write_text(f"#!/bin/sh\necho v{version}\n")
    os.chmod(root / "bin" / "run", 0o755)
    os.symlink("bin/run", root / "run")
    if version >= 2:
        (root / "lib" / "mod3.py").write_bytes(b"changed in v2\n" * 100)
        (root / "lib" / "mod4.py").rename(root / "lib" / "renamed4.py")
        (root / "lib" / "new.py").write_bytes(b"new in v2\n" * 200)


class Swarm:
    def __init__(self, tmp: Path, tracker: TrackerProcess, procs: list[Any]) -> None:
        self.tmp, self.tracker, self.procs = tmp, tracker, procs

    def create(self, src: Path, tag: str) -> dict[str, Any]:
        announce = f"http://{self.tracker.host}:{self.tracker.port}/announce"
        out = self.tmp / "seed"
        done = subprocess.run(
            fabmurder("create", "--src", str(src), "--out-dir", str(out), "--tag", tag)
            + ["--announce", announce, "--layout", "tree"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        info: dict[str, Any] = json.loads(done.stdout)
        with (self.tmp / "tracker.allow").open("a") as fh:
            fh.write(info["info_hash"] + "\n")
        return info

    def seed(self, info: dict[str, Any]) -> None:
        status = self.tmp / f"seed-{info['tag']}.json"
        self.procs.append(
            subprocess.Popen(
                fabmurder("seed", "--torrent", info["torrent"], "--save-path")
                + [str(self.tmp / "seed"), "--bind", "127.0.0.2"]
                + ["--port", str(free_port("127.0.0.2")), "--status-file", str(status)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_until(lambda: read_json(status).get("state") == "seeding", 30, "the seeder")

    def peer(
        self, info: dict[str, Any], n: int, sha256: str | None = None, extra: tuple[str, ...] = ()
    ) -> tuple[int, str]:
        """Run peer ``n`` to its end, ``extra`` arguments appended; return its code and stderr."""
        temp = self.tmp / f"temp{n}"
        temp.mkdir(mode=0o700, exist_ok=True)
        addr = f"127.0.0.{10 + n}"
        done = subprocess.run(
            fabmurder("peer", "--torrent", info["torrent"], "--save-path", str(temp))
            + ["--bind", addr, "--port", str(free_port(addr))]
            + ["--status-file", str(self.status(n)), "--sha256", sha256 or info["sha256"]]
            + ["--dest", str(self.dest(n)), "--tag", info["tag"], "--timeout", "60"]
            + ["--seed-after", "0", "--seeder", "127.0.0.2", *extra],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stderr

    def v1_installed_then_v2(self, tmp: Path, meanwhile: Any = None) -> dict[str, Any]:
        """Install v1 on peer 0, run ``meanwhile``, then create and seed v2; return v2."""
        build(tmp / "v1", 1)
        build(tmp / "v2", 2)
        v1 = self.create(tmp / "v1", "v1")
        self.seed(v1)
        assert self.peer(v1, 0)[0] == 0
        if meanwhile is not None:
            meanwhile()
        v2 = self.create(tmp / "v2", "v2")
        self.seed(v2)
        return v2

    def dest(self, n: int) -> Path:
        return self.tmp / f"dest{n}"

    def status(self, n: int) -> Path:
        return self.tmp / f"peer{n}.json"


@pytest.fixture
def swarm(tmp_path: Path, tracker: TrackerProcess, processes: list[Any]) -> Swarm:
    return Swarm(tmp_path, tracker, processes)


def same_tree(a: Path, b: Path) -> None:
    assert manifest.scan(str(a)) == manifest.scan(str(b))


def test_a_tree_release_lands_mode_for_mode_and_its_digest_is_the_manifests(
    tmp_path: Path, swarm: Swarm
) -> None:
    build(tmp_path / "v1", 1)
    info = swarm.create(tmp_path / "v1", "v1")
    assert info["layout"] == "tree" and info["tarball"] == ""
    meta = metainfo.read(info["torrent"], tag="v1")
    assert meta.manifest is not None
    assert info["sha256"] == manifest.digest(meta.manifest) == meta.digest
    swarm.seed(info)
    code, err = swarm.peer(info, 0)
    assert code == 0, err
    same_tree(tmp_path / "v1", swarm.dest(0) / "v1")
    assert os.readlink(swarm.dest(0) / "v1" / "run") == "bin/run"
    assert (swarm.dest(0) / ".v1.sha256").read_text().strip() == info["sha256"]
    # Nothing half-made is left beside the release once the agent is gone.
    assert sorted(os.listdir(swarm.dest(0))) == [".v1.manifest", ".v1.sha256", "v1"]
    status = read_json(swarm.status(0))
    assert status["installed"] and status["reused"] == 0
    assert status["from_seeder"] + status["from_peers"] >= meta.size


def test_the_next_release_fetches_only_what_changed_and_reuses_renamed_files(
    tmp_path: Path, swarm: Swarm
) -> None:
    v2 = swarm.v1_installed_then_v2(tmp_path)
    code, err = swarm.peer(v2, 0)
    assert code == 0, err
    same_tree(tmp_path / "v2", swarm.dest(0) / "v2")
    status = read_json(swarm.status(0))
    fetched = status["from_seeder"] + status["from_peers"]
    changed = sum(
        (tmp_path / "v2" / p).stat().st_size for p in ("lib/mod3.py", "lib/new.py", "bin/run")
    )
    # The renamed file came from v1; only the changed files crossed the network.
    assert status["reused_files"] >= 40
    assert 0 < fetched <= changed + 16 * 1024, status
    # v1 is untouched by v2's install (copies, never hard links).
    same_tree(tmp_path / "v1", swarm.dest(0) / "v1")
    assert (swarm.dest(0) / "v1" / "lib" / "big.so").stat().st_nlink == 1


def test_a_release_edited_in_place_is_downloaded_again_and_its_edit_never_lands(
    tmp_path: Path, swarm: Swarm
) -> None:
    big = swarm.dest(0) / "v1" / "lib" / "big.so"

    def edit() -> None:
        with big.open("r+b") as fh:
            fh.seek(300_000)
            fh.write(b"EDITED ON THE HOST")

    v2 = swarm.v1_installed_then_v2(tmp_path, edit)
    code, err = swarm.peer(v2, 0)
    assert code == 0, err
    same_tree(tmp_path / "v2", swarm.dest(0) / "v2")
    assert b"EDITED" not in (swarm.dest(0) / "v2" / "lib" / "big.so").read_bytes()
    status = read_json(swarm.status(0))
    # The edited piece failed the check and was fetched; the rest of the file was reused.
    fetched = status["from_seeder"] + status["from_peers"]
    assert fetched >= 16 * 1024 and fetched < big.stat().st_size, status


def test_a_peer_refuses_a_tree_torrent_whose_digest_is_not_the_recorded_one(
    tmp_path: Path, swarm: Swarm
) -> None:
    build(tmp_path / "v1", 1)
    info = swarm.create(tmp_path / "v1", "v1")
    code, err = swarm.peer(info, 0, sha256="0" * 64)
    assert code == 1
    assert "the torrent's manifest has digest" in err
    assert not swarm.dest(0).exists() or os.listdir(swarm.dest(0)) == []


def test_a_hostile_manifest_in_a_torrent_is_refused_before_anything_is_written(
    tmp_path: Path, swarm: Swarm
) -> None:
    import libtorrent as lt

    build(tmp_path / "v1", 1)
    info = swarm.create(tmp_path / "v1", "v1")
    top = lt.bdecode(Path(info["torrent"]).read_bytes())
    tree = manifest.unpack(top[b"info"][metainfo.MANIFEST_KEY])
    tree["entries"].append({"path": "escape", "type": "link", "mode": 0o777, "target": "../.."})
    tree["entries"].sort(key=lambda e: e["path"])
    top[b"info"][metainfo.MANIFEST_KEY] = manifest.pack(tree)
    Path(info["torrent"]).write_bytes(lt.bencode(top))
    code, err = swarm.peer(info, 0, sha256=manifest.digest(tree))
    assert code == 1
    assert "refusing manifest entry 'escape'" in err and "leaves the release" in err
    assert not swarm.dest(0).exists()
    shutil.rmtree(tmp_path / "temp0")


def test_small_files_cost_their_bytes_on_the_wire_not_a_block_each(
    tmp_path: Path, swarm: Swarm
) -> None:
    # As a hybrid torrent, 300 files of 1-8 KiB sent one whole 16 KiB block each
    # (the v1 half's pad bytes): 4.9 MB on the wire for 1.4 MB of files.
    src = tmp_path / "small"
    for i in range(300):
        (src / f"d{i % 6}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 6}" / f"m{i}.js").write_bytes(os.urandom(1024 + 23 * i))
    payload = sum(1024 + 23 * i for i in range(300))
    info = swarm.create(src, "s1")
    swarm.seed(info)
    code, err = swarm.peer(info, 0)
    assert code == 0, err
    same_tree(src, swarm.dest(0) / "s1")
    ended = time.time()
    seeder = swarm.tmp / "seed-s1.json"
    # The seeder's counter is libtorrent's payload upload, pad bytes included.
    wait_until(lambda: read_json(seeder).get("updated_at", 0) > ended + 0.6, 10, "its status")
    assert payload <= read_json(seeder)["uploaded"] <= payload * 1.01


def test_a_file_changed_inside_starts_from_its_old_copy_and_fetches_only_its_changed_piece(
    tmp_path: Path, swarm: Swarm
) -> None:
    def change() -> None:
        big = tmp_path / "v2" / "lib" / "big.so"
        data = bytearray(big.read_bytes())
        data[500_000:500_010] = b"0123456789"
        big.write_bytes(bytes(data))

    v2 = swarm.v1_installed_then_v2(tmp_path, change)
    code, err = swarm.peer(v2, 0)
    assert code == 0, err
    same_tree(tmp_path / "v2", swarm.dest(0) / "v2")
    status = read_json(swarm.status(0))
    fetched = status["from_seeder"] + status["from_peers"]
    assert status["reused_by_path"] >= 1
    # big.so is 1 MiB; its one changed piece (and the small changed files) came.
    assert fetched < 256 * 1024, status


def test_stripes_of_a_tree_release_are_cut_from_the_pieces_still_missing() -> None:
    from fabmurder.host.transfer import STRIPE_PRIORITY, stripe_priorities

    missing = [3, 40, 41, 90, 91, 92, 200, 255]
    firsts = []
    for index in range(4):
        prios = stripe_priorities(256, index, 4, missing=missing)
        firsts.append([p for p, prio in enumerate(prios) if prio == STRIPE_PRIORITY])
    # Every missing piece is first for exactly one peer, two each; none other is.
    assert firsts == [[3, 40], [41, 90], [91, 92], [200, 255]]


def test_a_tree_shaped_like_node_modules_lands_file_for_file_and_costs_its_bytes(
    tmp_path: Path, swarm: Swarm
) -> None:
    # The benchmark's 30,000 files of 1-8 KiB in 600 directories, a tenth of it:
    # the shape that failed on every peer (docs/delta.md).
    from test_host_request_queues import small_tree

    src = tmp_path / "many"
    small_tree(src, 3000)
    info = swarm.create(src, "m1")
    meta = metainfo.read(info["torrent"], tag="m1")
    # More than V2_MAX_FILES files: a v1 torrent, its files end to end, no pad.
    assert tree.V2_MAX_FILES < 3000 and versions(meta) == (True, False)
    swarm.seed(info)
    code, err = swarm.peer(info, 0)
    assert code == 0, err
    same_tree(src, swarm.dest(0) / "m1")
    status = read_json(swarm.status(0))
    assert status["from_seeder"] + status["from_peers"] == meta.size


def versions(meta: metainfo.Metainfo) -> tuple[bool, bool]:
    """Return whether the torrent is (v1, v2)."""
    import libtorrent as lt

    hashes = lt.torrent_info(meta.raw).info_hashes()
    return hashes.has_v1(), hashes.has_v2()


def test_the_next_release_of_a_many_file_tree_fetches_the_pieces_its_changes_overlap(
    tmp_path: Path, swarm: Swarm
) -> None:
    from test_host_request_queues import small_tree

    small_tree(tmp_path / "m1", 3000)
    shutil.copytree(tmp_path / "m1", tmp_path / "m2", symlinks=True)
    m2 = tmp_path / "m2"
    (m2 / "d0" / "m0.js").write_bytes(b"changed\n" * 500)
    (m2 / "d7" / "m7.js").rename(m2 / "d7" / "moved7.js")
    (m2 / "d9" / "new.js").write_bytes(b"new\n" * 1000)
    os.remove(m2 / "d11" / "m11.js")
    m1_info = swarm.create(tmp_path / "m1", "m1")
    swarm.seed(m1_info)
    assert swarm.peer(m1_info, 0)[0] == 0
    info = swarm.create(m2, "m2")
    meta = metainfo.read(info["torrent"], tag="m2")
    assert versions(meta) == (True, False)
    swarm.seed(info)
    code, err = swarm.peer(info, 0)
    assert code == 0, err
    same_tree(m2, swarm.dest(0) / "m2")
    status = read_json(swarm.status(0))
    fetched = status["from_seeder"] + status["from_peers"]
    # Two changed files (the moved one comes from m1): each costs the pieces it
    # overlaps, at most two pieces where it fits in one, never the tree.
    assert 0 < fetched <= 4 * meta.piece_size < meta.size // 20, status
    same_tree(tmp_path / "m1", swarm.dest(0) / "m1")


def test_stripes_of_pieces_of_unequal_sizes_hold_equal_bytes_not_equal_counts() -> None:
    from fabmurder.host.transfer import STRIPE_PRIORITY, stripe_priorities

    # 600 small files' pieces, then 4 large files' 64 KiB pieces (as a tree's are).
    lengths = [4096] * 600 + [65536] * 120
    held = []
    for index in range(8):
        prios = stripe_priorities(len(lengths), index, 8, lengths=lengths)
        first = [n for n, prio in zip(lengths, prios, strict=True) if prio == STRIPE_PRIORITY]
        held.append(sum(first))
    assert sum(held) == sum(lengths)
    # Every slice within one piece of its share.
    assert max(held) - min(held) <= 65536 + 4096, held


def test_a_delta_peer_holding_back_from_the_seeder_still_lands_the_release(
    tmp_path: Path, swarm: Swarm
) -> None:
    # The lab switch (docs/delta.md): with no other peer to take pieces from, the
    # seeder's slowed connection must lift after its grace and the release land.
    v2 = swarm.v1_installed_then_v2(tmp_path)
    settings = (
        '{"fabmurder_seeder_hold": 1, "fabmurder_seeder_rate": 1024, "fabmurder_seeder_grace": 1}'
    )
    code, err = swarm.peer(v2, 0, extra=("--stripe", "0/2", "--settings", settings))
    assert code == 0, err
    same_tree(tmp_path / "v2", swarm.dest(0) / "v2")


def test_a_tree_of_one_file_lands_under_its_tag(tmp_path: Path, swarm: Swarm) -> None:
    # As v2, libtorrent read a one-file torrent as a file named "big", not
    # "o1/big", and create refused its own torrent ("outside 'o1'").
    src = tmp_path / "one" / "lib"
    src.mkdir(parents=True)
    (src / "big.so").write_bytes(os.urandom(300_000))
    info = swarm.create(tmp_path / "one", "o1")
    assert versions(metainfo.read(info["torrent"], tag="o1")) == (True, False)
    swarm.seed(info)
    code, err = swarm.peer(info, 0)
    assert code == 0, err
    same_tree(tmp_path / "one", swarm.dest(0) / "o1")


def test_a_hybrid_tree_torrent_is_refused(tmp_path: Path) -> None:
    import libtorrent as lt

    build(tmp_path / "v1", 1)
    info = tree.create(str(tmp_path / "v1"), str(tmp_path / "t"), "v1", "http://h/a", 65536)[1]
    entries = manifest.files(info)
    creator = lt.create_torrent(
        [lt.create_file_entry(f"v1/{e['path']}", e["size"]) for e in entries], 65536
    )
    base = tmp_path / "base"
    base.mkdir()
    os.symlink(tmp_path / "v1", base / "v1")
    lt.set_piece_hashes(creator, str(base))
    hybrid = creator.generate()
    hybrid[b"info"][metainfo.MANIFEST_KEY] = manifest.pack(info)
    with pytest.raises(metainfo.TorrentError, match="must be v1 or v2, not both"):
        metainfo.parse(lt.bencode(hybrid))
