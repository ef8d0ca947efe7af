"""``murder.deploy`` on the fleet when a peer fails: only the peers that got the release switch.

Host 1 is tracker and seeder, hosts 2-5 the peers; releases land in
``destination_path/releases/<tag>`` with a ``current`` symlink. Host 5 fails
at will: its ``releases/<tag>`` already holds a release that fabmurder made
from another artifact (a digest record that does not match), which its agent
refuses without downloading. That tree is in place, so a deploy that switched
every host would point host 5's ``current`` at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fabmurder import releases
from fabmurder.errors import DeployError
from fabmurder.testing.deploykit import DeployKit

SIZE = 256 * 1024
PEERS = (2, 3, 4, 5)
GOOD = (2, 3, 4)
BROKEN = 5

PLANT = 'mkdir -p "$1/$2" && echo other > "$1/$2/VERSION" && printf "%s\\n" "$3" > "$1/.$2.sha256"'


@pytest.fixture(scope="module")
def tree(kit: DeployKit) -> dict[str, Any]:
    return kit.make_tree(1, kit.files_path, SIZE)


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    kit.reset(range(1, 6))
    yield
    kit.reset(range(1, 6))


def plant_other_release(kit: DeployKit, index: int, tag: str) -> None:
    """Make ``releases/<tag>`` on a host hold another artifact's release."""
    kit.sh(index, PLANT, f"{kit.destination_path}/releases", tag, "0" * 64)


def current(kit: DeployKit, index: int) -> str:
    return kit.sh(index, f"readlink {kit.destination_path}/current || true").strip()


def on_disk(kit: DeployKit, index: int) -> list[str]:
    """Return the releases under ``releases/`` on a host (not the digest records)."""
    return sorted(n for n in kit.listing(index, f"{kit.destination_path}/releases") if n[0] != ".")


def logged(kit: DeployKit, index: int) -> list[list[str]]:
    """Return ``[action, release]`` of each line of a host's ``revisions.log``."""
    text = kit.sh(index, f"cat {kit.destination_path}/revisions.log 2>/dev/null || true")
    return [line.split()[1:3] for line in text.splitlines()]


def host(kit: DeployKit, index: int) -> str:
    return kit.fleet.host(index).host_string


def test_deploy_switches_and_cleans_up_only_the_peers_that_got_the_release(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: hosts 2-4 point at dp2 and drop dp1 (keep_releases 1); host 5 failed
    within max_failed_peers and keeps dp1 as current, dp1 on disk, its log untouched."""
    c = kit.context(kit.murder(PEERS, max_failed_peers=1, keep_releases=1))
    first = releases.deploy(c, tag="dp1")
    assert first.report.failures == {}
    assert [current(kit, i) for i in PEERS] == ["releases/dp1"] * 4

    plant_other_release(kit, BROKEN, "dp2")
    deployed = releases.deploy(c, tag="dp2")
    assert list(deployed.report.failures) == [host(kit, BROKEN)]
    assert "it holds another release" in deployed.report.failures[host(kit, BROKEN)]
    assert deployed.published == {host(kit, i): "dp1" for i in GOOD}
    assert deployed.removed == {host(kit, i): ["dp1"] for i in GOOD}
    for index in GOOD:
        assert current(kit, index) == "releases/dp2", index
        assert on_disk(kit, index) == ["dp2"], index
        assert kit.manifest(index, f"{kit.destination_path}/releases/dp2") == tree, index
        assert logged(kit, index) == [["deploy", "dp1"], ["deploy", "dp2"]], index
    assert current(kit, BROKEN) == "releases/dp1"
    assert on_disk(kit, BROKEN) == ["dp1", "dp2"]  # cleanup passed it by
    assert kit.sh(BROKEN, f"cat {kit.destination_path}/releases/dp2/VERSION") == "other\n"
    assert logged(kit, BROKEN) == [["deploy", "dp1"]]


def test_deploy_switches_no_host_when_the_distribution_fails(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    """Expected: DeployError naming host 5; every host's current and log stay on dq1, and
    both releases stay on disk."""
    c = kit.context(kit.murder(PEERS, max_failed_peers=0, keep_releases=1))
    releases.deploy(c, tag="dq1")
    plant_other_release(kit, BROKEN, "dq2")
    with pytest.raises(DeployError) as caught:
        releases.deploy(c, tag="dq2")
    assert list(caught.value.failures) == [host(kit, BROKEN)]
    for index in PEERS:
        assert current(kit, index) == "releases/dq1", index
        assert logged(kit, index) == [["deploy", "dq1"]], index
        assert on_disk(kit, index) == ["dq1", "dq2"], index
    for index in GOOD:  # the distribution's work stays, unpublished
        assert kit.manifest(index, f"{kit.destination_path}/releases/dq2") == tree, index
