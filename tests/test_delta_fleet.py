"""Tree releases (``murder.layout: tree``) through the function layer, on real fleet hosts.

Host 1 is tracker and seeder, hosts 2-5 peers. Each test deploys with
:func:`fabmurder.releases.deploy` into its own ``destination_path`` and
proves what it claims from the hosts themselves: every peer's
``releases/<tag>`` is compared, path by path (kind, mode, link target,
SHA-256), with the tree on the seeder.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from fabmurder import releases
from fabmurder.config import settings
from fabmurder.errors import ConfigError
from fabmurder.testing.deploykit import DeployKit

DEST = "/srv/delta"
BUILD = "/srv/dbuild"
PEERS = (2, 3, 4, 5)
BIG = 2 * 1024 * 1024
#: where the tests edit the big file (inside it, same size)
EDIT_AT = BIG // 2

#: write version N of a release tree at argv[1] (each version changes the one before)
MAKE = r"""
import os, random, shutil, sys
root, version, size, at = sys.argv[1], *map(int, sys.argv[2:5])
shutil.rmtree(root, ignore_errors=True)
rnd = random.Random(7)
os.makedirs(f"{root}/lib/deep"); os.makedirs(f"{root}/empty"); os.makedirs(f"{root}/bin")
files = {f"lib/m{i}.py": rnd.randbytes(rnd.randint(200, 9000)) for i in range(60)}
files["lib/deep/medium.so"] = rnd.randbytes(300_000)
big = bytearray(rnd.randbytes(size))
for v in range(2, version + 1):
    edit = random.Random(v)
    for name in edit.sample(sorted(n for n in files if n.startswith("lib/m")), 3):
        files[name] = edit.randbytes(len(files[name]) + edit.randint(-100, 100))
    files[f"lib/added{v}.py"] = edit.randbytes(5000)
    files.pop(f"lib/m{10 + v}.py", None)
    files[f"lib/renamed{v}.py"] = files.pop(f"lib/m{20 + v}.py")
    big[at : at + 4096] = edit.randbytes(4096)
files["lib/big.bin"] = bytes(big)
files["VERSION"] = f"{version}\n".encode()
for name, data in files.items():
    with open(f"{root}/{name}", "wb") as fh:
        fh.write(data)
open(f"{root}/empty-file", "wb").close()
with open(f"{root}/bin/run", "w") as fh:
    fh.write("#!/bin/sh\necho run\n")
os.chmod(f"{root}/bin/run", 0o755)
os.chmod(f"{root}/lib/deep", 0o750)
os.symlink("bin/run", f"{root}/run")
"""


@pytest.fixture
def delta(kit: DeployKit) -> Iterator[DeployKit]:
    hosts = [1, *PEERS]
    kit.reset(hosts)
    wipe = f"rm -rf -- {DEST} {BUILD}"
    for index in hosts:
        kit.sh(index, wipe)
    yield kit
    kit.reset(hosts)
    for index in hosts:
        kit.sh(index, wipe)


def build(kit: DeployKit, version: int) -> dict[str, Any]:
    """Write version ``version`` of the tree on the seeder; return its listing."""
    kit.fleet.run_in(
        1, ["/usr/bin/python3", "-c", MAKE, BUILD, str(version), str(BIG), str(EDIT_AT)]
    )
    return kit.manifest(1, BUILD)


def deploy(kit: DeployKit, tag: str, peers: tuple[int, ...]) -> Any:
    """Deploy the seeder's tree as release ``tag`` to ``peers`` (a subset of PEERS)."""
    c = kit.context(
        kit.murder(PEERS, destination_path=DEST, files_path=BUILD, layout="tree", seed_after=3)
    )
    hosts = [kit.fleet.host(i).host_string for i in peers]
    return releases.deploy(c, tag=tag, hosts=hosts)


def landed(kit: DeployKit, index: int, tag: str) -> dict[str, Any]:
    return kit.manifest(index, f"{DEST}/releases/{tag}")


def test_the_layout_setting_takes_tarball_or_tree_and_nothing_else() -> None:
    from invoke import Context

    assert settings(Context()).layout == "tarball"
    assert settings(Context(), layout="tree").layout == "tree"
    with pytest.raises(ConfigError, match="murder.layout must be one of tarball, tree"):
        settings(Context(), layout="zip")


@pytest.mark.fleet
def test_peers_with_the_previous_an_older_or_no_release_all_land_the_seeders_bytes(
    delta: DeployKit,
) -> None:
    kit = delta
    build(kit, 1)
    deploy(kit, "r1", (2, 3, 4))
    build(kit, 2)
    deploy(kit, "r2", (2, 3))
    want = build(kit, 3)
    assert "run" in want and "empty" in want and "empty-file" in want
    done = deploy(kit, "r3", PEERS)  # 2, 3 hold r2; 4 holds r1; 5 holds nothing
    for index in PEERS:
        assert landed(kit, index, "r3") == want, f"host {index}"
        assert kit.sh(index, f"readlink {DEST}/current").strip() == "releases/r3"
    fetched = {index: done.report.hosts[kit.fleet.host(index).host_string] for index in PEERS}
    size = done.report.size
    assert all(r.ok and r.hash_failures == 0 for r in fetched.values())
    # The empty peer fetched everything; the others about what changed since
    # their release (about 20 KB of small files and one 64 KiB piece of the big
    # file per version; the big file, changed inside, starts from its old copy).
    assert fetched[5].from_seeder + fetched[5].from_peers >= size
    for index, most in ((2, 128 * 1024), (3, 128 * 1024), (4, 192 * 1024)):
        got = fetched[index].from_seeder + fetched[index].from_peers
        assert got < most, f"host {index} fetched {got} of {size} bytes"


@pytest.mark.fleet
def test_a_release_edited_on_one_peer_is_fetched_again_and_its_edit_reaches_no_one(
    delta: DeployKit,
) -> None:
    kit = delta
    build(kit, 1)
    deploy(kit, "e1", (2, 3))
    # On host 2, edit r1's big file in place, where v2 leaves it as it was.
    edited = f"{DEST}/releases/e1/lib/big.bin"
    mark = b"EDITED-ON-HOST-2" * 256
    proc = kit.fleet.popen_in(
        2,
        ["dd", f"of={edited}", "bs=4096", "seek=1", "conv=notrunc", "status=none"],
        stdin=subprocess.PIPE,
    )
    proc.communicate(mark, timeout=30)
    assert mark in kit.read_bytes(2, edited)
    want = build(kit, 2)
    done = deploy(kit, "e2", (2, 3, 4))
    for index in (2, 3, 4):
        assert landed(kit, index, "e2") == want, f"host {index}"
        assert mark not in kit.read_bytes(index, f"{DEST}/releases/e2/lib/big.bin")
    reports = {i: done.report.hosts[kit.fleet.host(i).host_string] for i in (2, 3, 4)}
    # Host 2 fetched the edited piece (one 64 KiB piece) on top of what host 3,
    # which holds e1 as installed, fetched; nobody was sent a piece that failed.
    got = {i: r.from_seeder + r.from_peers for i, r in reports.items()}
    assert got[2] - got[3] >= 64 * 1024, got
    assert all(r.hash_failures == 0 for r in reports.values())
