"""The murder config subtree: defaults, flags over config, env vars, validation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fabric import Config
from invoke import Context

import fabmurder
from fabmurder.config import DEFAULTS, ConfigWarning, settings, split_host
from fabmurder.errors import ConfigError


def context(**murder: object) -> Context:
    config = Config()
    config.load_collection(fabmurder.ns.configuration())
    for key, value in murder.items():
        config.murder[key] = value
    return Context(config=config)


def test_every_key_is_declared_in_the_collection_defaults() -> None:
    declared = fabmurder.ns.configuration()["murder"]
    assert set(declared) == set(DEFAULTS)
    assert declared["tracker_port"] == 8998
    assert declared["max_failed_peers"] == 0


def test_a_flag_overrides_the_config_and_none_falls_back_to_it() -> None:
    c = context(tag="from-config", timeout=100, files_path="/srv/a")
    s = settings(c, tag="from-flag", timeout=None, files_path=None)
    assert s.tag == "from-flag"
    assert s.timeout == 100.0
    assert s.files_path == "/srv/a"


def test_flags_given_as_strings_are_converted_to_numbers() -> None:
    s = settings(context(), timeout="12.5", max_failed_peers="2", force="true")
    assert (s.timeout, s.max_failed_peers, s.force) == (12.5, 2, True)


def test_environment_variables_override_declared_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_MURDER_TAG", "v9")
    monkeypatch.setenv("FABRIC_MURDER_PEERS", "web1, web2 root@web3:2222")
    monkeypatch.setenv("FABRIC_MURDER_TIMEOUT", "45")
    config = Config()
    config.load_collection(fabmurder.ns.configuration())
    config.load_shell_env()
    s = settings(Context(config=config))
    assert s.tag == "v9"
    assert s.peers == ("web1", "web2", "root@web3:2222")
    assert s.timeout == 45.0


def test_an_unknown_key_warns_and_names_the_likely_typo() -> None:
    with pytest.warns(ConfigWarning, match=r"murder\.peer\b.*did you mean murder\.peers"):
        settings(context(peer=["a"]))


def test_the_tag_defaults_to_a_utc_timestamp() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    tag = settings(context()).tag
    after = datetime.now(UTC)
    # The whole tag is the format, to the second: strptime refuses anything else.
    stamp = datetime.strptime(tag, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert stamp.strftime("%Y%m%dT%H%M%SZ") == tag  # zero-padded, nothing around it
    assert before <= stamp <= after


@pytest.mark.parametrize(
    ("tag", "problem"),
    [
        ("a/b", "'/'"),
        ("..", "'..'"),
        ("v 1", "whitespace"),
        ("$(reboot)", "metacharacters"),
        ("v`id`", "metacharacters"),
        ("v1;rm", "metacharacters"),
    ],
)
def test_an_unsafe_tag_is_refused_with_the_reason(tag: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        settings(context(), tag=tag)


def test_the_same_peer_named_twice_is_refused_even_with_user_and_port() -> None:
    with pytest.raises(ConfigError, match="same host twice"):
        settings(context(peers=["web1", "root@WEB1:22"]))


def test_the_seeder_may_not_also_be_a_peer() -> None:
    with pytest.raises(ConfigError, match="both the seeder and a peer"):
        settings(context(seeder="web1", peers=["web1:22", "web2"]))


def test_tracker_and_seeder_may_share_a_host() -> None:
    s = settings(context(tracker="build", seeder="build", peers=["web1"]))
    assert s.role_hosts == ("build", "web1")


@pytest.mark.parametrize(
    ("key", "value"),
    [("timeout", "soon"), ("tracker_port", "http"), ("parallel", 0), ("max_failed_peers", -1)],
)
def test_a_non_numeric_or_out_of_range_value_is_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        settings(context(**{key: value}))


def test_a_missing_role_is_named_with_where_to_set_it() -> None:
    s = settings(context(seeder="build"))
    with pytest.raises(ConfigError, match=r"murder\.peers is not set.*FABRIC_MURDER_PEERS"):
        s.require("seeder", "peers")


def test_an_external_tracker_satisfies_the_tracker_role() -> None:
    s = settings(context(tracker_url="http://10.0.0.1:6969/announce"))
    assert s.require("tracker") is s
    assert s.role_hosts == ()


def test_relative_remote_paths_are_refused() -> None:
    with pytest.raises(ConfigError, match="remote_path"):
        settings(context(remote_path="opt/fabmurder"))


def test_host_strings_split_into_user_host_and_port() -> None:
    assert split_host("deploy@web1:2222") == ("deploy", "web1", 2222)
    assert split_host("web1") == (None, "web1", None)
    assert split_host("[fd00::1]:22") == (None, "fd00::1", 22)
    with pytest.raises(ConfigError, match="non-numeric port"):
        split_host("web1:ssh")


def test_every_config_key_is_documented_in_the_usage_page() -> None:
    from pathlib import Path

    usage = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text()
    undocumented = [key for key in DEFAULTS if f"`{key}`" not in usage]
    assert undocumented == []
