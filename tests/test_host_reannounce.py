"""A seed agent really re-announces despite a long min interval, and has room for its peers.

The tracker runs with its defaults (interval 1800 s, min interval 900 s),
as the control side starts it. libtorrent obeys ``min interval`` unless the
agent's forced re-announce says otherwise, so without that flag the tracker
would hear from an agent once and then not for 15 minutes: a restarted
tracker would stay empty and a late peer would never learn of an early one.
Real libtorrent, the real tracker, on loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from test_host_artifact import make_release_tree

from fabmurder.testing.hostcli import run as fab
from fabmurder.testing.proc import wait_until
from fabmurder.tracker.client import TrackerProcess


def open_files_limit(pid: int) -> tuple[int, int]:
    """Return the soft and hard ``Max open files`` of a process, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def announces(tracker: TrackerProcess) -> int:
    body = tracker.get("/metrics").body.decode()
    match = re.search(r"^fabmurder_tracker_announces_total (\d+)$", body, re.M)
    assert match, body
    return int(match.group(1))


def test_a_seed_re_announces_every_few_seconds_despite_a_900_s_min_interval(
    tmp_path: Path,
) -> None:
    allow = tmp_path / "tracker.allow"
    tracker = TrackerProcess.start(["--allow-file", str(allow)])
    seed = None
    try:
        src = make_release_tree(tmp_path / "src", big=200_000)
        created = fab(
            "create", "--src", str(src), "--out-dir", str(tmp_path / "seed"), "--tag", "v1",
            "--announce", f"http://{tracker.host}:{tracker.port}/announce",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        out = json.loads(created.stdout)
        assert fab("allow", "--file", str(allow), "--add", out["info_hash"]).returncode == 0
        log = open(tmp_path / "seed.log", "w")  # noqa: SIM115
        seed = subprocess.Popen(
            [
                sys.executable, "-m", "fabmurder", "seed", "--torrent", out["torrent"],
                "--save-path", str(tmp_path / "seed"), "--bind", "127.0.15.1", "--port", "0",
                "--status-file", str(tmp_path / "seed.status.json"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(lambda: announces(tracker) >= 1, 30, "the seed's first announce")
        # The agent re-announces every 10 s: two more within 30 s, where a
        # clamped agent would send none for 900 s.
        wait_until(lambda: announces(tracker) >= 3, 30, "two re-announces")
        assert seed.poll() is None, (tmp_path / "seed.log").read_text()
        # The agent raised its descriptor limit so libtorrent may keep its 2,000 connections.
        soft, hard = open_files_limit(seed.pid)
        assert soft >= min(hard, 2564)
    finally:
        if seed is not None:
            seed.terminate()
            seed.wait(20)
        assert tracker.stop() == 0
