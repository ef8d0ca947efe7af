"""Deregistration on the fleet: once a run ends, the tracker serves its swarm no more.

Each run registers its torrent's info-hash on the tracker's allow-list with
a deploy token of its own, the secret its torrent announces under. Host 1 is
tracker and seeder, hosts 2-3 the peers. What the tracker allows is read on
its host (the allow-list file) and asked of the tracker itself over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fabmurder import pipeline
from fabmurder.errors import DeployError
from fabmurder.report import DeployReport
from fabmurder.testing.deploykit import Background, DeployKit, wait_for

#: the release: 1 MiB, which the rate limit stretches over a few seconds
SIZE = 1024 * 1024
PEERS = (2, 3)


@pytest.fixture(scope="module")
def tree(kit: DeployKit) -> dict[str, Any]:
    return kit.make_tree(1, kit.files_path, SIZE)


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    kit.reset(range(1, 4))
    yield
    kit.reset(range(1, 4))


def allow_list(kit: DeployKit) -> dict[str, str | None]:
    """Return info-hash -> deploy token (None: no token) from the tracker's allow-list file."""
    text = kit.sh(1, 'cat -- "$1" 2>/dev/null || true', f"{kit.temp_path}/tracker.allow")
    entries: dict[str, str | None] = {}
    for line in text.splitlines():
        words = line.split()
        if words:
            entries[words[0]] = words[1] if len(words) > 1 else None
    return entries


def registered(kit: DeployKit, run: Background) -> tuple[str, str]:
    """Wait until the run has registered its torrent and its tracker listens; return the
    info-hash and the deploy token."""
    tracker = f"{kit.fleet.host(1).address}:{kit.tracker_port}"

    def entry() -> tuple[str, str] | None:
        run.check()
        tokened = [(h, t) for h, t in allow_list(kit).items() if t]
        return tokened[0] if tokened and tracker in kit.listening(1) else None

    found: tuple[str, str] = wait_for(entry, 30, "the run's torrent on the allow-list")
    return found


def ask(kit: DeployKit, path: str, token: str, info_hash: str) -> int:
    """Return the HTTP status of ``/<path>/<token>`` for ``info_hash``, asked from a peer."""
    escaped = "".join(f"%{b:02x}" for b in bytes.fromhex(info_hash))
    query = f"?info_hash={escaped}"
    if path == "announce":
        query += "&peer_id=-XX0001-abcdefghijkl&port=6999&uploaded=0&downloaded=0&left=1"
    url = f"http://{kit.fleet.host(1).address}:{kit.tracker_port}/{path}/{token}{query}"
    return kit.http_get(2, url)[0]


def test_after_a_run_its_info_hash_and_deploy_token_open_nothing_on_the_tracker(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: during the run the token opens the swarm; after it, the list holds neither
    and the still-running tracker refuses an announce and a scrape under the token."""
    c = kit.context(kit.murder(PEERS, upload_rate_limit=200_000))
    run = kit.background(pipeline.distribute_files, c, tag="dr1")
    info_hash, token = registered(kit, run)
    # the control: while the run lasts, the token is the way in
    assert ask(kit, "announce", token, info_hash) == 200
    report: DeployReport = run.result(90)
    assert report.failures == {} and report.info_hash == info_hash

    assert allow_list(kit) == {}
    assert token not in kit.sh(1, f"cat {kit.temp_path}/tracker.allow")
    assert any(" tracker " in p for p in kit.agents(1))  # the tracker lives on, for the next run
    # The tracker rereads its allow-list at most once a second (tracker/allow.py).
    wait_for(lambda: ask(kit, "announce", token, info_hash) == 404, 10, "the token to be refused")
    assert ask(kit, "scrape", token, info_hash) == 404


def test_a_failed_deregistration_fails_the_run_naming_the_tracker(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: DeployError naming the tracker host and the info-hash it still serves;
    the peers' release is in place and reported."""
    c = kit.context(kit.murder(PEERS, upload_rate_limit=200_000))
    run = kit.background(pipeline.distribute_files, c, tag="dr2")
    info_hash, token = registered(kit, run)
    # A directory where the allow-list's lock file goes: every later edit of the list fails.
    kit.sh(1, 'rm -f -- "$1" && mkdir -- "$1"', f"{kit.temp_path}/.tracker.allow.lock")
    with pytest.raises(DeployError) as caught:
        run.result(90)
    tracker = kit.fleet.host(1).host_string
    assert list(caught.value.failures) == [tracker]
    assert "allow-list" in caught.value.failures[tracker], caught.value.failures
    assert info_hash in str(caught.value), str(caught.value)
    assert allow_list(kit) == {info_hash: token}  # what the error says: it is still there
    report = caught.value.report
    assert isinstance(report, DeployReport) and report.failures == {}
    for index in PEERS:
        assert kit.manifest(index, f"{kit.destination_path}/dr2") == tree, index
