"""Shared fixtures: the session's fleet of real SSH hosts, and the root requirement.

Tests that need root and network namespaces either use the ``fleet``
fixture, carry ``@pytest.mark.fleet``, or ask for the ``require_root``
fixture. Where those are missing they skip, except under ``CI=true``, where
they fail: a suite that skips itself green is broken. Every other skip goes
through the same rule, :func:`skip_unless`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabmurder.testing import fleet as fleet_mod
from fabmurder.testing.deploykit import DeployKit

FLEET_TOOLS = ("ip", "tc", "nsenter", "unshare", "setsid", "ssh-keygen", "/usr/sbin/sshd")


def in_ci() -> bool:
    """Tell whether we run in CI, where nothing may skip for want of root."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_unless(condition: object, reason: str) -> None:
    """Skip the running test unless ``condition`` holds; under CI, fail instead.

    The one rule for every skip in the suite: a machine may lack root, a tool
    or an interpreter, but CI must have them all, so there a skip is a failure.
    """
    if condition:
        return
    if in_ci():
        pytest.fail(f"under CI nothing may skip, and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def missing_for_fleet() -> str | None:
    """Return why this machine cannot run a fleet, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths, tc, sshd)"
    missing = [tool for tool in FLEET_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (run scripts/bootstrap.sh)"
    return None


def require_fleet_support() -> None:
    """Skip the running test if the machine cannot run a fleet; fail instead under CI."""
    reason = missing_for_fleet()
    skip_unless(reason is None, str(reason))


@pytest.fixture(scope="session")
def require_root() -> None:
    """Skip (fail under ``CI=true``) unless this is root with the fleet's tools."""
    require_fleet_support()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "fleet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fleet)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fleet") is not None:
        require_fleet_support()


@pytest.fixture(scope="session")
def fleet(require_root: None) -> Iterator[fleet_mod.Fleet]:
    """Bring up the session's fleet (``FABMURDER_FLEET_NAME``/``_SIZE``, uncapped)."""
    name = os.environ.get("FABMURDER_FLEET_NAME", "test")
    size = int(os.environ.get("FABMURDER_FLEET_SIZE", "9"))
    running = fleet_mod.up(size, name=name)
    try:
        yield running
    finally:
        fleet_mod.down(name)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the agent's wheels once, so that edits to the tree mid-session change nothing."""
    from invoke import Context

    from fabmurder import install
    from fabmurder.config import settings

    out = tmp_path_factory.mktemp("wheels")
    for path in install.wheel_set(settings(Context())).paths:
        shutil.copy(path, out / path.name)
    return out


@pytest.fixture(scope="session")
def kit(fleet: fleet_mod.Fleet, wheels: Path) -> DeployKit:
    """Install the agent once on every fleet host, for the reliability tests' deploys."""
    from fabmurder import pipeline

    deploy_kit = DeployKit(fleet, str(wheels))
    everyone = range(2, len(fleet.hosts) + 1)
    pipeline.setup(deploy_kit.context(deploy_kit.murder(peers=everyone)))
    return deploy_kit
