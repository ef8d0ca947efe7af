"""The quickstart works as written: its shell blocks run, in order, on a fresh local fleet.

The install block is left out (the test runs in the project's venv, which
is what that block makes); every other ``sh`` block of
``docs/quickstart.md`` runs in one bash script, with ``$HOME`` a temporary
directory, exactly as a new user would paste them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fabmurder.testing import fleet

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)


def quickstart_script() -> str:
    """Return the quickstart's shell blocks as one script, without the install block."""
    blocks = BLOCK.findall(QUICKSTART.read_text())
    assert blocks and blocks[0].startswith("# install"), "the first block installs"
    return "set -euo pipefail\n" + "\n".join(blocks[1:])


def test_the_quickstart_blocks_are_found() -> None:
    script = quickstart_script()
    assert "fab murder.deploy --tag v1" in script
    assert "pip install" not in script


@pytest.mark.fleet
def test_a_new_user_following_the_quickstart_deploys_to_a_local_fleet(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        # the wheel cache of this machine, so the agent's wheels are not repacked
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"),
        "PYTHONUNBUFFERED": "1",
    }
    try:
        out = subprocess.run(
            ["bash", "-c", quickstart_script()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        fleet.down("qs")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "release v1: 3 of 3 peer(s) ok" in out.stdout
    assert "release v2: 3 of 3 peer(s) ok" in out.stdout
    assert "current: v2" in out.stdout and "current: v1" in out.stdout
    # the last look at a peer, after the rollback
    tail = out.stdout[out.stdout.rindex("releases/v1") :]
    assert "hello, v1" in tail
    assert re.search(r"deploy v2 by \S+ \(was v1\)\n.*rollback v1 by \S+ \(was v2\)", tail)
