"""The release layout's shell commands, run for real in a local shell, and their parsing.

The fleet tests (``test_releases_fleet.py``) run the same commands over SSH;
here they run against a temporary directory so that edge cases (a symlink
planted in ``releases``, ``current`` being a directory, readers racing a
switch) are cheap to set up.
"""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from invoke import Config, Context
from invoke.exceptions import Exit

from fabmurder import summary, tasks
from fabmurder.config import DEFAULTS
from fabmurder.errors import ConfigError
from fabmurder.layout import (
    HostReleases,
    Layout,
    Revision,
    inspect_command,
    parse_inspect,
    remove_command,
    switch_command,
)
from fabmurder.releases import KEEP_RELEASES, keep_releases


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)


def record(tag: str, action: str = "publish", when: str = "2026-11-26T10:00:00Z") -> Revision:
    return Revision(when, action, tag, "alice@control", None)


@pytest.fixture
def lay(tmp_path: Path) -> Layout:
    root = tmp_path / "app dir"  # a space proves the quoting
    for tag in ("v1", "v2", "v3"):
        (root / "releases" / tag).mkdir(parents=True)
        (root / "releases" / tag / "VERSION").write_text(tag)
    return Layout(str(root))


def test_switching_points_current_at_the_release_and_logs_one_line(lay: Layout) -> None:
    assert sh(switch_command(lay, "v1", record("v1"))).returncode == 0
    out = sh(switch_command(lay, "v2", record("v2", when="2026-11-26T10:00:01Z")))
    assert out.returncode == 0, out.stderr
    assert os.readlink(lay.current) == "releases/v2"
    assert Path(lay.current, "VERSION").read_text() == "v2"
    assert sorted(os.listdir(lay.root)) == ["current", "releases", "revisions.log"]
    assert Path(lay.log).read_text().splitlines() == [
        "2026-11-26T10:00:00Z publish v1 by alice@control",
        "2026-11-26T10:00:01Z publish v2 by alice@control",
    ]


def test_a_switch_prints_the_layout_it_leaves_and_nothing_when_it_fails(lay: Layout) -> None:
    out = sh(switch_command(lay, "v2", record("v2")))
    assert out.returncode == 0, out.stderr
    after = parse_inspect("h", lay, out.stdout)
    assert after.current == "v2" and sorted(after.releases) == ["v1", "v2", "v3"]
    assert [r.tag for r in after.revisions] == ["v2"]  # the line this switch logged
    fresh = parse_inspect("h", lay, sh(inspect_command(lay)).stdout)
    assert (after.current, after.releases, after.revisions) == (
        fresh.current, fresh.releases, fresh.revisions,
    )  # fmt: skip
    failed = sh(switch_command(lay, "v9", record("v9")))
    assert failed.returncode != 0 and failed.stdout == ""
    assert os.readlink(lay.current) == "releases/v2"


def test_a_reader_never_sees_current_missing_while_it_is_switched(lay: Layout) -> None:
    sh(switch_command(lay, "v1", record("v1")))
    stop = threading.Event()
    seen: set[str] = set()
    misses: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(os.readlink(lay.current))
            except OSError as exc:
                misses.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            tag = ("v1", "v2", "v3")[i % 3]
            assert sh(switch_command(lay, tag, record(tag))).returncode == 0
    finally:
        stop.set()
        reader.join(10)
    assert misses == []
    assert seen >= {"releases/v2", "releases/v3"}


def test_switching_to_a_missing_release_fails_and_leaves_current_alone(lay: Layout) -> None:
    sh(switch_command(lay, "v1", record("v1")))
    os.symlink("/etc", Path(lay.releases) / "evil")
    for tag in ("v9", "evil"):
        assert sh(switch_command(lay, tag, record(tag))).returncode != 0
    assert os.readlink(lay.current) == "releases/v1"
    assert len(Path(lay.log).read_text().splitlines()) == 1


def test_a_current_that_is_a_real_directory_is_not_replaced(lay: Layout) -> None:
    Path(lay.current).mkdir()
    (Path(lay.current) / "keep").write_text("mine")
    assert sh(switch_command(lay, "v1", record("v1"))).returncode != 0
    assert (Path(lay.current) / "keep").read_text() == "mine"
    assert [n for n in os.listdir(lay.root) if n.startswith("current.tmp")] == []


def test_a_tag_with_shell_metacharacters_never_reaches_the_shell(lay: Layout) -> None:
    with pytest.raises(ConfigError, match="invalid release tag"):
        switch_command(lay, "v1;rm -rf /", record("v1"))
    with pytest.raises(ConfigError):
        remove_command(lay, ["../v1"])


def test_removing_skips_current_symlinks_and_anything_outside_releases(
    lay: Layout, tmp_path: Path
) -> None:
    sh(switch_command(lay, "v1", record("v1")))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    os.symlink(str(outside), Path(lay.releases) / "linked")
    (Path(lay.releases) / ".v0.removing-dead").mkdir()  # left by a killed cleanup
    out = sh(remove_command(lay, ["v1", "v2", "linked", "gone"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["v2"]
    assert sorted(os.listdir(lay.releases)) == ["linked", "v1", "v3"]
    assert (outside / "precious").read_text() == "x"


def test_inspecting_orders_releases_by_the_earlier_of_first_log_line_and_mtime(lay: Layout) -> None:
    releases = Path(lay.releases)
    (releases / ".v4.partial-abc").mkdir()
    os.utime(releases / "v1", (1000, 1000))  # never published: oldest by mtime
    late = datetime(2026, 11, 26, 11, tzinfo=UTC).timestamp()
    os.utime(releases / "v2", (late, late))  # written into after it landed
    lines = [
        "2026-11-26T10:00:03Z deploy v3 by bob@ctl",
        "garbage line",
        "2026-11-26T10:00:05Z deploy v2 by bob@ctl (was v3)",
        "2026-11-26T10:00:09Z rollback v3 by bob@ctl (was v2)",
    ]
    Path(lay.log).write_text("\n".join(lines) + "\n")
    os.symlink("releases/v3", lay.current)
    out = sh(inspect_command(lay))
    assert out.returncode == 0, out.stderr
    state = parse_inspect("h", lay, out.stdout)
    assert state.releases == ["v1", "v3", "v2"]
    assert state.current == "v3" and state.previous() == "v1"
    assert [r.action for r in state.revisions] == ["deploy", "deploy", "rollback"]
    assert state.revisions[1].previous == "v3"
    assert state.removable(1) == ["v1"]  # v3 is current, v2 the newest


def test_inspecting_an_empty_destination_finds_nothing(tmp_path: Path) -> None:
    lay = Layout(str(tmp_path / "nothing here"))
    out = sh(inspect_command(lay))
    assert out.returncode == 0 and out.stdout == ""
    state = parse_inspect("h", lay, out.stdout)
    assert (state.releases, state.current, state.previous()) == ([], None, None)


def test_cleanup_keeps_the_newest_and_the_current_release() -> None:
    state = HostReleases("h", releases=["a", "b", "c", "d", "e", "f"], current="a")
    assert state.removable(5) == []
    assert state.removable(2) == ["b", "c", "d"]
    assert HostReleases("h", releases=["a", "b"], current=None).removable(1) == ["a"]


def test_a_revision_line_round_trips() -> None:
    rev = Revision("2026-11-26T10:00:00Z", "rollback", "v1", "alice@ctl", "v2")
    assert rev.line() == "2026-11-26T10:00:00Z rollback v1 by alice@ctl (was v2)"
    assert Revision.parse(rev.line()) == rev
    assert Revision.parse("2026-11-26 deploy v1 by x") is None


def test_keep_releases_comes_from_the_flag_then_the_config_then_five() -> None:
    assert keep_releases(Context()) == KEEP_RELEASES == DEFAULTS["keep_releases"] == 5
    assert keep_releases(Context(config=Config(overrides={"murder": {"keep_releases": "3"}}))) == 3
    assert keep_releases(Context(), "2") == 2
    with pytest.raises(ConfigError, match="keep_releases"):
        keep_releases(Context(), "0")
    with pytest.raises(ConfigError, match="keep_releases"):
        keep_releases(Context(), "two")


def test_the_publish_task_without_a_tag_exits_with_one_sentence() -> None:
    with pytest.raises(Exit, match="publish needs a release tag: give --tag or set murder.tag"):
        tasks.publish(Context())


def test_the_status_line_of_a_peer_shows_its_current_release_and_releases() -> None:
    entry = {
        "roles": ["peer"],
        "status": {"daemons": {"peer-v2": {"pid": 7, "alive": True}}, "releases": ["current"]},
        "layout": {"current": "v2", "releases": ["v1", "v2"], "previous": "v1"},
    }
    assert summary.describe(entry) == "running: peer-v2 (pid 7); current: v2; releases: v1, v2"
