"""Real agents report their progress to the real tracker, which the control host then reads.

A seed and two peers (real libtorrent, loopback addresses) run with
``--report-id``; the tracker's ``/progress`` then shows each of them by id,
the peers installed with their bytes split between the seeder and each
other, and the totals summed, without anyone reading a status file.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from test_host_swarm import (
    Node,
    Tracker,
    create_release,
    seeding,
    start_peer,
    start_seed,
    tracker,  # noqa: F401 - the module's tracker fixture, used by name below
)

from fabmurder.testing.hostcli import run as fab
from fabmurder.testing.proc import wait_until
from fabmurder.tracker.client import get


def test_agents_report_each_state_and_their_bytes_to_the_tracker(
    tmp_path: Path,
    tracker: Tracker,  # noqa: F811
) -> None:
    port = urlsplit(tracker.url).port
    assert port is not None
    nodes: list[Node] = []
    try:
        release = create_release(tmp_path, tracker)

        def progress(since: int = 0) -> dict:  # type: ignore[type-arg]
            url = f"/progress?info_hash={release.info_hash}&since={since}"
            return json.loads(get("127.0.0.1", port, url).body)  # type: ignore[no-any-return]

        seed = start_seed(nodes, tmp_path, release, "--report-id", "seed-1")
        seeding(seed)
        peers = [
            start_peer(nodes, tmp_path, release, seed, seed_after="30", report_id=f"peer-{n}")
            for n in (1, 2)
        ]
        done = wait_until(
            lambda: (view := progress())["totals"]["installed"] == 2 and view,
            60,
            "both peers to report their release installed",
        )
        changes = done["changes"]
        assert set(changes) == {"seed-1", "peer-1", "peer-2"}
        assert changes["seed-1"]["state"] == "seeding" and changes["seed-1"]["addr"] == seed.addr
        for n, node in zip((1, 2), peers, strict=True):
            record = changes[f"peer-{n}"]
            assert record["installed"] is True and record["addr"] == node.addr
            assert record["done"] == record["total"] == release.size
            assert record["from_seeder"] + record["from_peers"] >= release.size
            # What the tracker heard is what the agent wrote in its own status file.
            assert record["from_seeder"] <= node.status()["from_seeder"]
        assert done["totals"]["reporters"] == 3
        # Nothing changed state since: a poll from the last seq brings nothing.
        assert progress(done["seq"])["changes"] == {}
        for node in nodes:
            node.stop()
        final = progress()
        assert {rid: r["state"] for rid, r in final["changes"].items()} == {
            "seed-1": "stopped",
            "peer-1": "stopped",
            "peer-2": "stopped",
        }
    finally:
        for node in nodes:
            node.stop()


def test_a_bad_report_id_is_a_usage_error(tmp_path: Path) -> None:
    result = fab(
        "seed", "--torrent", str(tmp_path / "x.torrent"), "--save-path", str(tmp_path),
        "--bind", "127.0.0.1", "--port", "1", "--status-file", str(tmp_path / "s.json"),
        "--report-id", "no spaces",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--report-id" in result.stderr
