"""The tracker at deploy scale: a seeder learns every leecher at once.

A deploy's seeder must reach every peer for the striped first pass (each
peer asks it for its own slice first). With the ordinary cap of 50 peers
per reply, a seeder in a swarm of hundreds learnt 50 of them, most from its
own rack, and the other peers got nothing from it.
"""

from __future__ import annotations

from fabmurder.tracker.client import TrackerProcess, announce_target, compact_peers

HASH = bytes.fromhex("5a" * 20)


def pid(n: int) -> bytes:
    return b"-FM0001-" + n.to_bytes(12, "big")


def address(n: int) -> str:
    # 300 leechers over many /24 racks, as a fleet's would be.
    return f"127.1.{n // 40}.{n % 40 + 1}"


def test_a_seeder_that_joins_learns_every_leecher_and_a_leecher_still_gets_fifty() -> None:
    proc = TrackerProcess.start()
    try:
        for n in range(300):
            proc.get(announce_target(HASH, pid(n), 7000, 100, numwant=2000), address(n))
        seeder = proc.get(
            announce_target(HASH, pid(999), 7999, 0, event="started", numwant=2000), "127.2.0.1"
        ).bdecode()
        learnt = compact_peers(seeder[b"peers"])  # type: ignore[arg-type]
        assert len(learnt) == 300
        assert set(learnt) == {(address(n), 7000) for n in range(300)}
        leecher = proc.get(announce_target(HASH, pid(0), 7000, 100, numwant=2000), address(0))
        assert len(compact_peers(leecher.bdecode()[b"peers"])) == 50  # type: ignore[arg-type]
        # A peer that finished here is a seed too, but not the deploy's seeder: 50.
        proc.get(announce_target(HASH, pid(1), 7000, 0, event="completed"), address(1))
        finished = proc.get(announce_target(HASH, pid(1), 7000, 0, numwant=2000), address(1))
        assert len(compact_peers(finished.bdecode()[b"peers"])) == 50  # type: ignore[arg-type]
        # Without numwant a seeder gets the ordinary number, as any client would.
        plain = proc.get(announce_target(HASH, pid(998), 7998, 0), "127.2.0.2").bdecode()
        assert len(compact_peers(plain[b"peers"])) == 50  # type: ignore[arg-type]
    finally:
        assert proc.stop() == 0
