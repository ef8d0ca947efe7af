"""The datacenter settings profile and the ip_filter built from the fleet's addresses."""

from __future__ import annotations

import libtorrent as lt
import pytest

from fabmurder.errors import ConfigError
from fabmurder.host import profile


def test_the_profile_turns_off_internet_discovery_and_utp_and_listens_on_one_address() -> None:
    pack = profile.settings("10.1.2.3", 6881)
    for key in ("enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp"):
        assert pack[key] is False
    assert pack["enable_incoming_utp"] is False and pack["enable_outgoing_utp"] is False
    assert pack["listen_interfaces"] == "10.1.2.3:6881"
    assert pack["announce_ip"] == "10.1.2.3"
    assert pack["outgoing_interfaces"] == "10.1.2.3"
    assert pack["allow_multiple_connections_per_ip"] is False  # bans must stick (tuning.md)
    assert pack["min_announce_interval"] <= 5
    assert pack["max_out_request_queue"] <= 32 and pack["max_allowed_in_request_queue"] <= 32
    assert pack["unchoke_slots_limit"] == -1


def test_libtorrent_accepts_every_setting_of_the_profile() -> None:
    pack = profile.settings("127.0.0.9", 0)
    ses = lt.session(pack)
    applied = ses.get_settings()
    for key, value in pack.items():
        assert applied[key] == value, key


def test_an_ipv6_address_is_bracketed_in_listen_interfaces() -> None:
    assert profile.settings("::1", 7000)["listen_interfaces"] == "[::1]:7000"


@pytest.mark.parametrize("addr", ["0.0.0.0", "::", "host.example", ""])
def test_listening_everywhere_or_on_a_name_is_refused(addr: str) -> None:
    with pytest.raises(ConfigError):
        profile.settings(addr, 6881)


def test_overrides_come_last_and_must_be_a_json_object_of_scalars() -> None:
    overrides = profile.parse_overrides('{"max_out_request_queue": 64, "enable_dht": false}')
    pack = profile.settings("127.0.0.1", 1, overrides)
    assert pack["max_out_request_queue"] == 64
    for bad in ("[1]", '{"a": [1]}', "not json"):
        with pytest.raises(ConfigError, match="--settings"):
            profile.parse_overrides(bad)
    assert profile.parse_overrides(None) == {}


def test_the_ip_filter_admits_only_the_allowed_addresses() -> None:
    filt = profile.ip_filter(["10.0.0.0/24", "192.168.7.9", "fd00::/64"])
    assert filt.access("10.0.0.1") == 0
    assert filt.access("10.0.0.255") == 0
    assert filt.access("10.0.1.1") == 1
    assert filt.access("192.168.7.9") == 0
    assert filt.access("192.168.7.10") == 1
    assert filt.access("8.8.8.8") == 1
    assert filt.access("fd00::5") == 0
    assert filt.access("fd01::5") == 1


def test_a_bad_allow_entry_is_named() -> None:
    with pytest.raises(ConfigError, match="10.0.0.300"):
        profile.ip_filter(["10.0.0.300"])
