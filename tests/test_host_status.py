"""The agent's status file: written atomically and rarely, parsed with suspicion."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabmurder.host import agent, metainfo, statusfile

#: cases per property; the CI count is reported in docs/tuning.md and the report
FUZZ_CASES = 400

counts = st.integers(min_value=0, max_value=2**53)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
valid_docs = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["seed", "peer"]),
        "tag": st.text(min_size=1, max_size=20),
        "info_hash": st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
        "pid": st.integers(1, 2**22),
        "state": st.sampled_from(statusfile.STATES),
        "installed": st.booleans(),
        "error": st.none() | st.text(max_size=50),
        "total": counts,
        "done": counts,
        "uploaded": counts,
        "from_seeder": counts,
        "from_peers": counts,
        "hash_failures": counts,
        "peers": counts,
        "started_at": times,
        "downloaded_at": st.none() | times,
        "installed_at": st.none() | times,
        "updated_at": times,
    }
)


@settings(max_examples=FUZZ_CASES, deadline=None)
@given(doc=valid_docs)
def test_every_well_formed_status_parses_back_unchanged(doc: dict[str, Any]) -> None:
    assert statusfile.parse_status(json.dumps(doc)) == doc


#: a value of the wrong type for each field
WRONG: dict[str, object] = {
    key: ("x" if kind in (int, (int, float), (int, float, type(None))) else 5)
    for key, kind in statusfile.STATUS_FIELDS.items()
}
WRONG.update(installed="yes", role="bogus", state="bogus", pid=True, done=-1)


@settings(max_examples=FUZZ_CASES, deadline=None)
@given(doc=valid_docs, data=st.data())
def test_a_status_with_a_field_missing_or_mistyped_is_refused(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(doc)))
    action = data.draw(st.sampled_from(["drop", "wrong", "list", "dict"]))
    if action == "drop":
        del doc[key]
    else:
        doc[key] = {"wrong": WRONG[key], "list": [], "dict": {}}[action]
    with pytest.raises(statusfile.StatusError):
        statusfile.parse_status(json.dumps(doc))


@settings(max_examples=FUZZ_CASES, deadline=None)
@given(text=st.text(max_size=300) | st.binary(max_size=300))
def test_parsing_arbitrary_text_returns_or_raises_status_error(text: str | bytes) -> None:
    try:
        doc = statusfile.parse_status(text)
    except statusfile.StatusError:
        return
    assert doc["state"] in statusfile.STATES


def _agent(tmp_path: Path) -> agent.Agent:
    (tmp_path / "v1.tar").write_bytes(b"x" * 40_000)
    meta = metainfo.create(
        str(tmp_path / "v1.tar"), str(tmp_path / "v1.torrent"), "http://127.0.0.1:1/announce", 16384
    )
    args = argparse.Namespace(status_file=str(tmp_path / "peer-v1.status.json"), seeder=None)
    return agent.Agent("peer", args, meta)


def test_the_status_file_is_replaced_atomically_at_most_twice_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's clock, stepped by the test: a slow machine cannot change what is seen.
    now = [1000.0]

    class Clock:
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def monotonic(self) -> float:
            return now[0]

    monkeypatch.setattr(agent, "time", Clock())
    subject = _agent(tmp_path)
    path = tmp_path / "peer-v1.status.json"
    subject.write_status(force=True)
    first = path.stat().st_ino
    for step in range(100):
        now[0] = 1000.0 + step * agent.STATUS_INTERVAL / 100
        subject.write_status()
    assert path.stat().st_ino == first  # throttled: no rewrite within STATUS_INTERVAL
    now[0] = 1000.0 + agent.STATUS_INTERVAL
    subject.write_status()
    assert path.stat().st_ino != first  # once the interval has passed, it is written again
    first = path.stat().st_ino
    subject.set_state("downloading")  # a change of state is written at once
    assert path.stat().st_ino != first
    assert statusfile.read_status(str(path))["state"] == "downloading"
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []


def test_transfer_credits_each_block_to_its_sender_or_else_its_requester() -> None:
    transfer = agent.Transfer(seeder="10.0.0.1")
    for block in range(4):
        transfer.block_requested(7, block, "10.0.0.1")
    transfer.block_received(7, 0, "10.0.0.1")
    transfer.block_received(7, 3, "10.0.0.2")  # end game: the other peer was faster
    transfer.piece_checked(7, [16384, 16384, 16384, 100])
    assert transfer.totals() == (3 * 16384, 100)
    transfer.piece_checked(7, [16384] * 4)  # nothing outstanding: nothing counted twice
    assert transfer.totals() == (3 * 16384, 100)
