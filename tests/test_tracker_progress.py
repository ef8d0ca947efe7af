"""Progress reports: agents report to the tracker, the control host reads only what changed.

Unit tests of :mod:`fabmurder.tracker.progress` (no sockets, a given clock)
and the live program over loopback, under deploy and tracker tokens.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path

import pytest

from fabmurder.testing.hostcli import run as fab
from fabmurder.tracker.client import TrackerProcess, query
from fabmurder.tracker.progress import Progress, RequestError, parse_report, parse_since

HASH = bytes.fromhex("ef" * 20)


def report_query(rid: str, state: str = "downloading", **fields: object) -> bytes:
    return query(info_hash=HASH, id=rid, state=state, **fields).encode()


def test_only_changes_of_state_are_news_and_bytes_go_to_the_totals() -> None:
    progress = Progress(max_swarms=4, max_reporters=100)
    for n in range(50):
        progress.add(parse_report(report_query(f"h{n}", total=1000)), f"10.0.0.{n}", 0.0)
    first = progress.view(HASH, 0)
    assert first["seq"] == 50 and len(first["changes"]) == 50  # type: ignore[arg-type]
    # A heartbeat that only moved bytes is no news, but the totals see it.
    progress.add(parse_report(report_query("h7", done=400, total=1000)), "10.0.0.7", 1.0)
    quiet = progress.view(HASH, 50)
    assert quiet["seq"] == 50 and quiet["changes"] == {}
    assert quiet["totals"]["done"] == 400  # type: ignore[index]
    assert quiet["totals"]["total"] == 50_000  # type: ignore[index]
    # A change of state is news, once.
    progress.add(
        parse_report(
            report_query("h7", "seeding", done=1000, total=1000, installed=1, from_peers=900)
        ),
        "10.0.0.7",
        2.0,
    )
    news = progress.view(HASH, 50)
    assert list(news["changes"]) == ["h7"]  # type: ignore[arg-type]
    h7 = news["changes"]["h7"]  # type: ignore[index]
    assert h7["installed"] is True and h7["from_peers"] == 900 and h7["seq"] == 51
    assert news["totals"]["installed"] == 1 and news["totals"]["done"] == 1000  # type: ignore[index]
    assert progress.view(HASH, 51)["changes"] == {}


def test_a_reporter_that_goes_quiet_is_marked_silent_once_and_a_finished_one_never() -> None:
    progress = Progress(max_swarms=4, max_reporters=100)
    progress.add(parse_report(report_query("a")), "10.0.0.1", 0.0)
    progress.add(parse_report(report_query("b", "stopped", installed=1)), "10.0.0.2", 0.0)
    progress.add(parse_report(report_query("c")), "10.0.0.3", 10.0)
    assert progress.mark_silent(deadline=5.0) == 1
    view = progress.view(HASH, 3)
    assert list(view["changes"]) == ["a"]  # type: ignore[arg-type]
    assert view["changes"]["a"]["silent"] is True  # type: ignore[index]
    assert view["totals"]["silent"] == 1  # type: ignore[index]
    assert progress.mark_silent(deadline=5.0) == 0  # once only
    # Heard from again: no longer silent, and that is news.
    progress.add(parse_report(report_query("a", done=5)), "10.0.0.1", 11.0)
    again = progress.view(HASH, 4)
    assert again["changes"]["a"]["silent"] is False  # type: ignore[index]
    assert again["totals"]["silent"] == 0  # type: ignore[index]


def test_the_silence_walk_and_the_change_list_cost_what_changed_not_the_swarm() -> None:
    """5,000 reporters: a walk that found nothing, and a poll with nothing new, touch nothing."""
    progress = Progress(max_swarms=4, max_reporters=10_000)
    for n in range(5000):
        progress.add(parse_report(report_query(f"h{n}")), "10.0.0.1", float(n))
    swarm = progress.swarms[HASH]
    seq = swarm.seq
    reads = 0

    class Counting(OrderedDict):  # type: ignore[type-arg]
        def __getitem__(self, key: object) -> object:
            nonlocal reads
            reads += 1
            return super().__getitem__(key)

    swarm.reports = Counting(swarm.reports)  # type: ignore[assignment]
    assert progress.mark_silent(deadline=-1.0) == 0
    assert progress.view(HASH, seq)["changes"] == {}
    assert reads <= 1
    # Ten go silent: ten reports are read, not 5,000.
    reads = 0
    assert progress.mark_silent(deadline=10.0) == 10
    assert reads == 10


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (query(id="a", state="seeding"), "info_hash"),
        (query(info_hash=HASH, state="seeding"), "id"),
        (query(info_hash=HASH, id="a b", state="seeding"), "id"),
        (query(info_hash=HASH, id="x" * 65, state="seeding"), "id"),
        (query(info_hash=HASH, id="a", state="dancing"), "state"),
        (query(info_hash=HASH, id="a", state="seeding", done="-1"), "done"),
        (query(info_hash=HASH, id="a", state="seeding", done="9" * 21), "done"),
        (query(info_hash=HASH, id="a", state="seeding", installed="yes"), "installed"),
        (query(info_hash=HASH, id="a", state="failed", error="e" * 301), "error"),
    ],
)
def test_a_malformed_report_is_refused_by_name(raw: str, why: str) -> None:
    with pytest.raises(RequestError, match=why):
        parse_report(raw.encode())


def test_progress_wants_a_hex_info_hash_and_a_number() -> None:
    assert parse_since(f"info_hash={HASH.hex()}&since=7".encode()) == (HASH, 7)
    for bad in ("info_hash=zz", f"info_hash={HASH.hex()}&since=-1", "since=1"):
        with pytest.raises(RequestError):
            parse_since(bad.encode())


def test_reports_travel_under_the_deploy_token_and_progress_under_the_trackers(
    tmp_path: Path,
) -> None:
    allow = tmp_path / "tracker.allow"
    added = fab("allow", "--file", str(allow), "--add", HASH.hex(), "--token", "deploy-1")
    assert added.returncode == 0, added.stderr
    tracker = TrackerProcess.start(
        ["--token", "trk", "--allow-file", str(allow), "--report-silence", "1"]
    )
    try:
        good = report_query("h1", "downloading", done=10, total=100).decode()
        assert tracker.get(f"/report/deploy-1?{good}", "127.0.16.1").status == 200
        # Without the deploy token, or with the tracker's, a report opens nothing.
        for path in ("/report", "/report/trk", "/report/wrong"):
            assert tracker.get(f"{path}?{good}", "127.0.16.1").status == 404
        other = query(info_hash=b"\x01" * 20, id="h1", state="seeding")
        assert tracker.get(f"/report/deploy-1?{other}", "127.0.16.1").status == 404
        # The control host reads under the tracker's token, never under a deploy token.
        assert tracker.get(f"/progress/deploy-1?info_hash={HASH.hex()}").status == 404
        view = json.loads(tracker.get(f"/progress/trk?info_hash={HASH.hex()}&since=0").body)
        assert view["changes"]["h1"]["addr"] == "127.0.16.1"
        assert view["totals"] == {
            "reporters": 1,
            "installed": 0,
            "failed": 0,
            "silent": 0,
            "done": 10,
            "total": 100,
            "from_seeder": 0,
            "from_peers": 0,
        }
        # No more reports: the tracker's housekeeping marks h1 silent within seconds.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            since = view["seq"]
            view = json.loads(
                tracker.get(f"/progress/trk?info_hash={HASH.hex()}&since={since}").body
            )
            if view["changes"]:
                break
            time.sleep(0.2)
        assert view["changes"]["h1"]["silent"] is True
        # Deregistering the release forgets its reports with its swarm.
        fab("allow", "--file", str(allow), "--remove", HASH.hex())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            gone = json.loads(tracker.get(f"/progress/trk?info_hash={HASH.hex()}").body)
            if gone["totals"]["reporters"] == 0:
                break
            time.sleep(0.2)
        assert gone["totals"]["reporters"] == 0
        assert tracker.get(f"/report/deploy-1?{good}", "127.0.16.1").status == 404
    finally:
        assert tracker.stop() == 0


def test_an_open_tracker_takes_reports_on_the_plain_path() -> None:
    tracker = TrackerProcess.start()
    try:
        url = "/report?" + report_query("x1", "seeding", installed=1).decode()
        assert tracker.get(url).status == 200
        bad = "/report?" + query(info_hash=HASH, id="x1", state="nope")
        response = tracker.get(bad)
        assert response.status == 400 and b"invalid state" in response.body
        view = json.loads(tracker.get(f"/progress?info_hash={HASH.hex()}").body)
        assert view["totals"]["installed"] == 1
    finally:
        assert tracker.stop() == 0
