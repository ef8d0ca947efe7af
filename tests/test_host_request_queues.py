"""Request queues by block size: a tree of small files keeps requests in flight like a tarball."""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from fabmurder.host import metainfo, profile, tree
from fabmurder.host.agent import Agent


def small_tree(root: Path, count: int) -> None:
    rnd = random.Random(3)
    for i in range(count):
        d = root / f"d{i % max(1, count // 50)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.js").write_bytes(rnd.randbytes(rnd.randint(1024, 8192)))


def test_a_torrent_of_full_blocks_keeps_the_profiles_queues() -> None:
    assert profile.request_queues(64 * 1024 * 1024, [256 * 1024] * 256) == {}
    # A tree of large files: only the files' last blocks are short.
    assert profile.request_queues(10 * 1024 * 1024, [1024 * 1024] * 10) == {}


def test_a_tree_of_small_files_gets_queues_deeper_by_its_blocks_shortfall_at_most_eight_times() -> (
    None
):
    out, into = (
        profile.DATACENTER["max_out_request_queue"],
        profile.DATACENTER["max_allowed_in_request_queue"],
    )
    four_kib = profile.request_queues(4096 * 1000, [4096] * 1000)
    assert four_kib == {"max_out_request_queue": out * 8, "max_allowed_in_request_queue": into * 8}
    # Mean block 8 KiB: twice the blocks for the bytes, four times the queue.
    eight_kib = profile.request_queues(8192 * 1000, [8192] * 1000)
    assert eight_kib == {"max_out_request_queue": out * 4, "max_allowed_in_request_queue": into * 4}


def test_the_agent_gives_libtorrent_the_deeper_queues_and_murder_libtorrent_still_wins(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    small_tree(src, 200)
    torrent = tmp_path / "s1.torrent"
    tree.create(str(src), str(torrent), "s1", "http://127.0.0.1:1/announce", 64 * 1024)
    meta = metainfo.read(str(torrent), tag="s1")
    os.symlink(src, tmp_path / "s1")

    def applied(settings: str | None) -> tuple[int, int]:
        args = argparse.Namespace(
            bind="127.0.0.1",
            port=0,
            settings=settings,
            upload_rate_limit=0,
            allow=[],
            save_path=str(tmp_path),
            status_file=str(tmp_path / "status.json"),
        )
        agent = Agent("seed", args, meta)
        agent.open_session()
        try:
            got = agent.ses.get_settings()
            return got["max_out_request_queue"], got["max_allowed_in_request_queue"]
        finally:
            agent.close()

    assert applied(None) == (128, 64)
    assert applied('{"max_allowed_in_request_queue": 8}') == (128, 8)
    # The agent's own lab switches ride the same JSON and never reach libtorrent.
    assert applied('{"fabmurder_seeder_hold": 5}') == (128, 64)


def test_the_seeders_queue_per_peer_falls_with_the_swarm_so_its_total_stays_about_two_peers() -> (
    None
):
    assert profile.seeder_queue(8, 1) == 8
    assert profile.seeder_queue(8, 2) == 8
    assert profile.seeder_queue(8, 4) == 4
    assert profile.seeder_queue(8, 8) == 2
    # never below the floor, however large the swarm
    for peers in (16, 64, 1000, 5000):
        assert profile.seeder_queue(8, peers) == profile.MIN_SEEDER_QUEUE
    # a tree of small blocks starts deeper and keeps its larger share
    assert profile.seeder_queue(64, 16) == 8
    assert profile.seeder_queue(64, 64) == 2


def test_a_seeder_told_the_swarms_size_advertises_its_smaller_queue_and_murder_libtorrent_wins(
    tmp_path: Path,
) -> None:
    payload = tmp_path / "data.bin"
    payload.write_bytes(random.Random(5).randbytes(512 * 1024))
    torrent = tmp_path / "t.torrent"
    metainfo.create(str(payload), str(torrent), "http://127.0.0.1:1/announce", 64 * 1024)
    meta = metainfo.read(str(torrent))

    def advertised(role: str, peers: int | None, settings: str | None = None) -> int:
        args = argparse.Namespace(
            bind="127.0.0.1", port=0, settings=settings, upload_rate_limit=0, allow=[],
            save_path=str(tmp_path), status_file=str(tmp_path / f"{role}.json"), peers=peers,
        )  # fmt: skip
        agent = Agent(role, args, meta)
        agent.open_session()
        try:
            return int(agent.ses.get_settings()["max_allowed_in_request_queue"])
        finally:
            agent.close()

    depth = profile.DATACENTER["max_allowed_in_request_queue"]
    assert advertised("seed", None) == depth
    assert advertised("seed", 64) == profile.seeder_queue(depth, 64) < depth
    # a peer's queue is for the other peers: the swarm's size leaves it alone
    assert advertised("peer", 64) == depth
    assert advertised("seed", 64, '{"max_allowed_in_request_queue": 6}') == 6
