"""Bad input on the fleet: each gets a clear error naming the problem, nothing written or deleted.

Host 1 is tracker and seeder, hosts 2-3 the peers. Most of these are
refused before any host is touched; the test then proves the hosts saw
nothing. Quoting gets one real deploy through paths full of spaces and
quotes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabmurder import pipeline
from fabmurder.config import ConfigWarning
from fabmurder.errors import ConfigError, DeployError, HostError
from fabmurder.overview import status
from fabmurder.testing.deploykit import DeployKit, write_fabfile

PEERS = (2, 3)
SIZE = 256 * 1024


@pytest.fixture(scope="module")
def tree(kit: DeployKit) -> dict[str, Any]:
    return kit.make_tree(1, kit.files_path, SIZE)


@pytest.fixture(autouse=True)
def clean_hosts(kit: DeployKit) -> Iterator[None]:
    kit.reset(range(1, 4))
    yield
    kit.reset(range(1, 4))


def untouched(kit: DeployKit, hosts: Any = (1, 2, 3)) -> None:
    """Assert that no host got a temp file or a release."""
    for index in hosts:
        assert kit.listing(index, kit.temp_path) == [], index
        assert kit.listing(index, kit.destination_path) == [], index


@pytest.mark.parametrize(
    ("tag", "problem"),
    [
        ("a/b", "contains '/'"),
        ("..", "contains '..'"),
        ("v1..2", "contains '..'"),
        ("v 1", "contains whitespace"),
        ("$(reboot)", "shell metacharacters"),
        ("v`id`", "shell metacharacters"),
        ("v1;rm", "shell metacharacters"),
    ],
)
def test_an_unsafe_tag_is_refused_by_name_before_any_host_is_touched(
    kit: DeployKit, tree: dict[str, Any], tag: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="invalid release tag") as caught:
        pipeline.distribute_files(kit.context(kit.murder(PEERS)), tag=tag)
    assert problem in str(caught.value) and repr(tag) in str(caught.value)
    untouched(kit)


def fab(kit: DeployKit, tmp_path: Path, murder: dict[str, Any], *args: str) -> Any:
    """Run the real ``fab`` with a user fabfile and the fleet's runtime config."""
    write_fabfile(tmp_path)
    staging = kit.fleet.write_fabric_yaml(tmp_path / "staging.yaml", extra={"murder": murder})
    return subprocess.run(
        [str(Path(sys.executable).with_name("fab")), "-f", str(staging), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_fab_command_refuses_an_unsafe_tag_in_one_sentence(
    kit: DeployKit, tree: dict[str, Any], tmp_path: Path
) -> None:
    out = fab(kit, tmp_path, kit.murder(PEERS), "murder.distribute-files", "--tag", "x;reboot")
    assert out.returncode == 1
    assert "invalid release tag 'x;reboot'" in out.stderr and "Traceback" not in out.stderr
    untouched(kit)


@pytest.mark.parametrize(
    ("setup", "message"),
    [("", "does not exist"), ("mkdir -p /srv/empty-build", "is an empty directory")],
)
def test_a_missing_or_empty_files_path_fails_naming_it_with_nothing_written(
    kit: DeployKit, tree: dict[str, Any], setup: str, message: str
) -> None:
    src = "/srv/empty-build" if setup else "/srv/no-such-build"
    if setup:
        kit.sh(1, setup)
    with pytest.raises(HostError) as caught:
        pipeline.distribute_files(kit.context(kit.murder(PEERS, files_path=src)), tag="in1")
    assert message in str(caught.value) and src in str(caught.value)
    assert "Traceback" not in str(caught.value)
    for index in (1, 2, 3):
        assert [n for n in kit.listing(index, kit.temp_path) if "in1" in n] == [], index
        assert kit.listing(index, kit.destination_path) == [], index


def test_a_destination_that_exists_and_is_not_ours_is_refused_and_left_alone(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    dest = f"{kit.destination_path}/in2"
    kit.sh(3, f"mkdir -p {dest} && echo precious > {dest}/data")
    with pytest.raises(ConfigError) as caught:
        pipeline.distribute_files(kit.context(kit.murder(PEERS)), tag="in2")
    message = str(caught.value)
    assert kit.fleet.host(3).host_string in message and "not installed by fabmurder" in message
    assert "--force" in message
    assert kit.sh(3, f"cat {dest}/data") == "precious\n"
    assert kit.listing(3, kit.destination_path) == ["in2"]
    assert kit.listing(2, kit.destination_path) == []


@pytest.mark.parametrize("kind", ["malformed", "mismatched"])
def test_a_malformed_or_mismatched_torrent_is_refused_by_every_peer_with_nothing_written(
    kit: DeployKit, tree: dict[str, Any], kind: str
) -> None:
    c = kit.context(kit.murder(PEERS, tag="in3", seed_after=0))
    info = pipeline.create_torrent(c)
    pipeline.start_tracker(c)
    pipeline.start_seeding(c)
    torrent = f"{kit.temp_path}/in3.torrent"
    if kind == "malformed":
        kit.sh(1, f"printf 'd8:announce' > {torrent}")
    else:
        pipeline.create_torrent(kit.context(kit.murder(PEERS, tag="other")))
        kit.sh(1, f"cp {kit.temp_path}/other.torrent {torrent}")
    with pytest.raises(DeployError) as caught:
        pipeline.peer_download(c, info["sha256"])
    assert len(caught.value.failures) == 2
    # The reason itself, not a word of it: "torrent" is in the temp path too.
    expected = (
        "malformed torrent: not valid bencoding"
        if kind == "malformed"
        else "torrent is for 'other.tar', not release 'in3'"
    )
    for reason in caught.value.failures.values():
        assert expected in reason and "Traceback" not in reason, reason
    for index in PEERS:
        assert kit.listing(index, kit.destination_path) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peers": None}, "murder.peers is not set"),
        ({"seeder": None}, "murder.seeder is not set"),
        ({"tracker": None}, "murder.tracker is not set"),
        ({"destination_path": None}, "murder.destination_path is not set"),
    ],
)
def test_a_missing_role_or_path_is_named_before_any_host_is_touched(
    kit: DeployKit, tree: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        pipeline.distribute_files(kit.context({**kit.murder(PEERS), **change}), tag="in4")
    untouched(kit)


def test_the_same_peer_named_twice_is_refused_even_under_another_spelling(
    kit: DeployKit, tree: dict[str, Any]
) -> None:
    host = kit.fleet.host(2)
    twice = [host.host_string, f"{host.address}"]
    with pytest.raises(ConfigError, match="names the same host twice"):
        pipeline.distribute_files(kit.context({**kit.murder(PEERS), "peers": twice}), tag="in5")
    untouched(kit)


def test_an_unknown_config_key_is_warned_about_with_a_suggestion(
    kit: DeployKit, tree: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.warns(ConfigWarning, match=r"murder\.timout; did you mean murder\.timeout\?"):
        status(kit.context({**kit.murder(PEERS), "timout": 5}))
    out = fab(kit, tmp_path, {**kit.murder(PEERS), "seeed_after": 1}, "murder.status")
    assert out.returncode == 0, out.stderr
    assert "murder: warning: unknown config key murder.seeed_after" in out.stderr


QUOTED = {
    "files_path": '/srv/it\'s a "build" $HOME dir',
    "temp_path": "/srv/fm tmp 'q' \"dq\"",
    "destination_path": "/srv/rel 'x' \"y\" $z `w`",
}


def test_paths_with_spaces_and_quotes_go_through_a_real_deploy_intact(
    kit: DeployKit, tmp_path: Path
) -> None:
    tree = kit.make_tree(1, QUOTED["files_path"], SIZE)
    murder = kit.murder(PEERS, **QUOTED)
    try:
        out = fab(kit, tmp_path, murder, "murder.distribute-files", "--tag", "q1")
        assert out.returncode == 0, out.stdout + out.stderr
        for index in PEERS:
            assert kit.manifest(index, f"{QUOTED['destination_path']}/q1") == tree
            assert kit.listing(index, QUOTED["temp_path"]) == []
            assert kit.listing(index, "/srv/rel") == []  # nothing at a mis-split path
    finally:
        pipeline.stop_tracker(kit.context(murder))
        for index in (1, *PEERS):
            script = 'rm -rf -- "$1" "$2" "$3"'
            kit.sh(index, script, *QUOTED.values())
    assert 'it\'s a "name".txt' in tree  # a file name with quotes, too
