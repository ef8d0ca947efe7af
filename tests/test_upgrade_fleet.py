"""Upgrading the agent on the fleet: hosts with an older agent get the new one, in place.

Hosts 1-3 (tracker and seeder, two peers) first get an older agent: another
fabmurder version, with a module the current one lacks, in a venv of its own
under ``UPGRADE``. A deploy with the current wheels finds the stamp differs,
installs over the older agent in the same venv, and ships the release with
it. Everything is read on the hosts themselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabmurder import pipeline
from fabmurder.testing.deploykit import DeployKit

UPGRADE = "/srv/fabmurder/upgrade"
HOSTS = (1, 2, 3)
PEERS = (2, 3)
OLD_VERSION = "0.0.1"
#: a module only the older agent has
OLD_MODULE = "fabmurder/_older_agent.py"

VERSION = """
import importlib.metadata, importlib.util, json
print(json.dumps([importlib.metadata.version("fabmurder"),
                  importlib.util.find_spec("fabmurder._older_agent") is not None]))
"""


@pytest.fixture(scope="module")
def tree(kit: DeployKit) -> dict[str, Any]:
    return kit.make_tree(1, kit.files_path, 256 * 1024)


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    kit.reset(HOSTS)
    for index in HOSTS:
        kit.sh(index, f"rm -rf {UPGRADE}")
    yield
    kit.reset(HOSTS)
    for index in HOSTS:
        kit.sh(index, f"rm -rf {UPGRADE}")


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def older_wheels(wheels: Path, out: Path) -> Path:
    """Copy the session's wheels to ``out``, fabmurder's as version 0.0.1 with OLD_MODULE."""
    out.mkdir()
    (current,) = wheels.glob("fabmurder-*.whl")
    for path in wheels.glob("*.whl"):
        if path != current:
            shutil.copy(path, out / path.name)
    version = current.name.split("-")[1]
    new_info, old_info = f"fabmurder-{version}.dist-info", f"fabmurder-{OLD_VERSION}.dist-info"
    files = [(OLD_MODULE, b'"""Only in the older agent."""\n')]
    with zipfile.ZipFile(current) as source:
        for name in source.namelist():
            data = source.read(name)
            if name.startswith(f"{new_info}/"):
                if name.endswith("/RECORD"):
                    continue
                if name.endswith("/METADATA"):
                    data = data.replace(f"Version: {version}".encode(), b"Version: 0.0.1")
                name = old_info + name[len(new_info) :]
            files.append((name, data))
    rows = [f"{name},{record_hash(data)},{len(data)}" for name, data in files]
    record = "\n".join([*rows, f"{old_info}/RECORD,,"]) + "\n"
    files.append((f"{old_info}/RECORD", record.encode()))
    with zipfile.ZipFile(out / f"fabmurder-{OLD_VERSION}-py3-none-any.whl", "w") as wheel:
        for name, data in files:
            wheel.writestr(name, data)
    return out


def agent(kit: DeployKit, index: int) -> dict[str, Any]:
    """Return the agent under UPGRADE on a host: version, old module, venv, stamp, wheels."""
    version, old_module = json.loads(
        kit.fleet.run_in(index, [f"{UPGRADE}/venv/bin/python", "-c", VERSION]).stdout
    )
    return {
        "version": version,
        "old module": old_module,
        # the venv itself: made once, kept by an upgrade
        "venv": kit.sh(index, f"stat -c '%i %y' {UPGRADE}/venv/pyvenv.cfg"),
        "stamp": kit.sh(index, f"cat {UPGRADE}/installed.sha256"),
        "wheels": sorted(kit.listing(index, f"{UPGRADE}/wheels")),
    }


def test_a_deploy_upgrades_an_older_agent_in_its_venv_and_ships_with_the_new_one(
    kit: DeployKit, wheels: Path, tree: dict[str, Any], tmp_path: Path
) -> None:
    """Expected: setup with old wheels installs 0.0.1; the deploy with the session's wheels
    reports every host done, and each host then runs the current version in the same venv,
    without the old module or wheel, under the new stamp; a second setup is up to date."""
    old = older_wheels(wheels, tmp_path / "old")
    older = kit.murder(PEERS, remote_path=UPGRADE, wheel_dir=str(old))
    assert sorted(pipeline.setup(kit.context(older)).values()) == ["installed"] * 3
    before = {index: agent(kit, index) for index in HOSTS}
    for state in before.values():
        assert (state["version"], state["old module"]) == (OLD_VERSION, True), state
        assert f"fabmurder-{OLD_VERSION}-py3-none-any.whl" in state["wheels"], state

    current = kit.murder(PEERS, remote_path=UPGRADE)  # the session's wheels
    report = pipeline.distribute_files(kit.context(current), tag="up1")
    assert report.failures == {}
    for index in PEERS:
        assert kit.manifest(index, f"{kit.destination_path}/up1") == tree, index
    (wheel,) = wheels.glob("fabmurder-*.whl")
    version = wheel.name.split("-")[1]
    assert version != OLD_VERSION
    for index in HOSTS:
        now = agent(kit, index)
        assert (now["version"], now["old module"]) == (version, False), now
        assert now["venv"] == before[index]["venv"], index  # upgraded in place
        assert now["stamp"] != before[index]["stamp"], index
        assert now["wheels"] == sorted(p.name for p in wheels.glob("*.whl")), now
    assert sorted(pipeline.setup(kit.context(current)).values()) == ["up to date"] * 3
