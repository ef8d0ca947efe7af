"""``--force`` on the fleet, end to end through the real ``fab``: both refusals it overrides.

A tree at ``destination_path/<tag>`` that fabmurder did not make (no digest
record beside it) is refused before anything is written, for the whole run
(``refuse_foreign``). One that fabmurder made from another artifact is
refused by that peer's agent. ``--force`` replaces both, and the peer agent
(``peer --force``) moves the old tree aside atomically. Host 1 is tracker and
seeder, hosts 2-4 the peers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabmurder import pipeline
from fabmurder.testing.deploykit import DeployKit, write_fabfile

PEERS = (2, 3, 4)
TAG = "fc1"
FOREIGN, OURS, EMPTY = PEERS


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    kit.reset(range(1, 5))
    yield
    kit.reset(range(1, 5))


def fab(kit: DeployKit, tmp_path: Path, peers: tuple[int, ...], *args: str) -> str:
    """Run ``fab murder.distribute-files --tag fc1 ARGS`` to ``peers``; return exit and output."""
    write_fabfile(tmp_path)
    config = kit.fleet.write_fabric_yaml(
        tmp_path / f"env-{'-'.join(map(str, peers))}.yaml", extra={"murder": kit.murder(peers)}
    )
    command = [str(Path(sys.executable).with_name("fab")), "-f", str(config)]
    out = subprocess.run(
        [*command, "murder.distribute-files", "--tag", TAG, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return f"exit {out.returncode}\n{out.stdout}{out.stderr}"


def temp_of_tag(kit: DeployKit, index: int) -> list[str]:
    return [name for name in kit.listing(index, kit.temp_path) if TAG in name]


def test_force_replaces_a_foreign_tree_and_another_artifacts_release(
    kit: DeployKit, tmp_path: Path
) -> None:
    """Expected: without --force, the foreign tree stops the run before anything is written,
    and the other artifact's release fails its peer; with --force, every peer holds the new
    release, recorded as fabmurder's own, and nothing of the old trees is left."""
    dest = f"{kit.destination_path}/{TAG}"
    old = kit.make_tree(1, kit.files_path, 200_000)
    report = pipeline.distribute_files(kit.context(kit.murder((OURS,))), tag=TAG)
    assert report.failures == {}
    kit.sh(FOREIGN, 'mkdir -p "$1" && echo mine > "$1/theirs.txt"', dest)
    foreign = kit.manifest(FOREIGN, dest)
    new = kit.make_tree(1, kit.files_path, 300_000)
    assert new != old
    allowed = kit.sh(1, f"cat {kit.temp_path}/tracker.allow")

    # 1. refuse_foreign: the whole run stops; nothing is packed, registered or started
    out = fab(kit, tmp_path, PEERS)
    assert out.startswith("exit 1\n"), out
    assert f"{dest} already exists on {kit.fleet.host(FOREIGN).host_string} and was not" in out
    assert "nothing was changed (use --force to replace it)" in out, out
    assert "Traceback" not in out, out
    assert kit.manifest(FOREIGN, dest) == foreign
    assert kit.manifest(OURS, dest) == old
    assert kit.listing(EMPTY, kit.destination_path) == []
    assert kit.sh(1, f"cat {kit.temp_path}/tracker.allow") == allowed
    for index in (1, *PEERS):
        assert temp_of_tag(kit, index) == [], index
        assert [p for p in kit.agents(index) if f"-{TAG}." in p] == [], index

    # 2. the peer agent: a release of another artifact under the tag fails that peer
    out = fab(kit, tmp_path, (OURS,))
    assert out.startswith("exit 1\n"), out
    assert "already exists; use --force to replace it (it holds another release" in out, out
    assert kit.manifest(OURS, dest) == old

    # 3. --force replaces both, on every peer
    out = fab(kit, tmp_path, PEERS, "--force")
    assert out.startswith("exit 0\n"), out
    assert f"release {TAG}: 3 of 3 peer(s) ok" in out, out
    for index in PEERS:
        assert kit.manifest(index, dest) == new, index
        left = kit.leftovers(index, TAG)
        assert left["partial"] == [] and left["temp"] == [], (index, left)
    # Each tree is now fabmurder's own, from this artifact: without --force a rerun
    # finds it installed everywhere and sends nothing.
    again = pipeline.distribute_files(kit.context(kit.murder(PEERS)), tag=TAG)
    assert again.failures == {}
    assert {r.state for r in again.hosts.values()} == {"already installed"}
    assert sum(r.from_seeder + r.from_peers for r in again.hosts.values()) == 0
