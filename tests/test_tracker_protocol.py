"""The tracker's protocol parsing, reply encoding and swarm rules, without sockets."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import bencodepy
import pytest

from fabmurder.errors import ConfigError
from fabmurder.tracker.allow import AllowList, parse_allow_file
from fabmurder.tracker.client import announce_target, compact_peers
from fabmurder.tracker.protocol import (
    RequestError,
    compact_peer,
    encode_compact,
    encode_dict_peers,
    encode_failure,
    parse_announce,
    parse_query,
    parse_scrape,
)
from fabmurder.tracker.racks import RackMap
from fabmurder.tracker.swarm import Limits, Swarms

HASH = bytes(range(20))


def pid(n: int) -> bytes:
    return b"-FM0001-" + n.to_bytes(12, "big")


def announce_query(**kw: object) -> bytes:
    base: dict[str, object] = {"info_hash": HASH, "peer_id": pid(1), "port": 6881, "left": 10}
    base.update(kw)
    target = announce_target(**base)  # type: ignore[arg-type]
    return target.split("?", 1)[1].encode()


def test_announce_parses_every_bep3_parameter() -> None:
    req = parse_announce(
        announce_query(
            uploaded=5,
            downloaded=7,
            event="started",
            numwant=12,
            compact=0,
            ip="10.0.0.9",
            key="k1",
        )
    )
    assert (req.info_hash, req.peer_id, req.port, req.left) == (HASH, pid(1), 6881, 10)
    assert (req.uploaded, req.downloaded, req.event, req.numwant) == (5, 7, b"started", 12)
    assert (req.compact, req.ip, req.key) == (False, "10.0.0.9", b"k1")


def test_announce_defaults_to_compact_and_no_numwant() -> None:
    req = parse_announce(announce_query())
    assert req.compact is True and req.numwant is None and req.event == b""


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (b"peer_id=" + b"a" * 20 + b"&port=1&left=0", "missing info_hash"),
        (b"info_hash=abc&peer_id=" + b"a" * 20 + b"&port=1&left=0", "invalid info_hash"),
        (b"info_hash=" + b"a" * 20 + b"&port=1&left=0", "missing peer_id"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=short&port=1&left=0", "invalid peer_id"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&left=0", "missing port"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=70000&left=0", "port"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=-1&left=0", "port"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1", "missing left"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=-5", "left"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=x", "left"),
        (
            b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=" + b"9" * 30,
            "left",
        ),
        (b"info_hash=%zz" + b"a" * 19 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=0", "percent"),
        (b"info_hash=" + b"a" * 19 + b"%4&peer_id=" + b"a" * 20 + b"&port=1&left=0", "percent"),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=0&event=x", "event"),
        (
            b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=0&numwant=-1",
            "numwant",
        ),
        (b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&left=0&ip=1.2.3", "ip"),
        (
            b"info_hash="
            + b"a" * 20
            + b"&peer_id="
            + b"a" * 20
            + b"&port=1&left=0&key="
            + b"k" * 65,
            "key",
        ),
        (b"&".join([b"x=1"] * 100), "too many"),
    ],
)
def test_malformed_announces_are_refused_with_a_reason(query: bytes, reason: str) -> None:
    with pytest.raises(RequestError, match=reason):
        parse_announce(query)


def test_percent_decoding_is_byte_exact_for_every_byte_value() -> None:
    raw = bytes(range(256))
    assert parse_query(b"x=" + b"".join(b"%%%02X" % b for b in raw)) == {b"x": [raw]}
    # unreserved characters may come literally, mixed with escapes
    assert parse_query(b"x=a%5Cx41\\N+") == {b"x": [b"a\\x41\\N+"]}


def test_stopped_may_omit_left() -> None:
    query = b"info_hash=" + b"a" * 20 + b"&peer_id=" + b"a" * 20 + b"&port=1&event=stopped"
    assert parse_announce(query).left == -1


def test_scrape_takes_several_info_hashes_and_refuses_wrong_lengths() -> None:
    query = b"info_hash=" + b"a" * 20 + b"&info_hash=" + b"b" * 20 + b"&info_hash=" + b"a" * 20
    assert parse_scrape(query) == [b"a" * 20, b"b" * 20]
    assert parse_scrape(b"") == []
    with pytest.raises(RequestError):
        parse_scrape(b"info_hash=short")


@pytest.mark.parametrize("peers6", [b"", bytes(18)])
def test_fast_compact_encoder_matches_bencode_py(peers6: bytes) -> None:
    peers = os.urandom(300)
    expected: dict[bytes, object] = {
        b"complete": 3,
        b"incomplete": 40,
        b"interval": 1800,
        b"min interval": 900,
        b"peers": peers,
    }
    if peers6:
        expected[b"peers6"] = peers6
    assert encode_compact(3, 40, 1800, 900, peers, peers6) == bencodepy.encode(expected)


def test_dictionary_form_lists_ip_port_and_optionally_peer_id() -> None:
    body = encode_dict_peers(1, 2, 60, 30, [(pid(3), "10.0.0.3", 7000)], with_peer_id=True)
    decoded = bencodepy.decode(body)
    assert decoded[b"peers"] == [{b"ip": b"10.0.0.3", b"port": 7000, b"peer id": pid(3)}]
    body = encode_dict_peers(1, 2, 60, 30, [(pid(3), "10.0.0.3", 7000)], with_peer_id=False)
    assert bencodepy.decode(body)[b"peers"] == [{b"ip": b"10.0.0.3", b"port": 7000}]


def test_failure_is_a_bencoded_failure_reason() -> None:
    assert bencodepy.decode(encode_failure("nope")) == {b"failure reason": b"nope"}


def test_compact_peer_is_six_bytes_for_ipv4_and_eighteen_for_ipv6() -> None:
    assert compact_peer("10.1.2.3", 258) == bytes([10, 1, 2, 3, 1, 2])
    assert len(compact_peer("::1", 1)) == 18
    assert compact_peers(compact_peer("10.1.2.3", 258)) == [("10.1.2.3", 258)]


# --- swarm rules -----------------------------------------------------------


def swarms(**limits: int) -> Swarms:
    return Swarms(Limits(**limits), RackMap({}).rack_of)


def ann(s: Swarms, n: int, ip: str, left: int, now: float = 0.0, **kw: object) -> list[bytes]:
    req = parse_announce(announce_query(peer_id=pid(n), port=6000 + n, left=left, **kw))
    return [p.peer_id for p in s.announce(req, ip, now).peers]


def test_a_peer_never_gets_itself_and_seeders_get_no_seeders() -> None:
    s = swarms()
    ann(s, 1, "10.0.0.1", 0)
    ann(s, 2, "10.0.0.2", 0)
    ann(s, 3, "10.0.0.3", 5)
    assert sorted(ann(s, 3, "10.0.0.3", 5)) == [pid(1), pid(2)]
    assert ann(s, 1, "10.0.0.1", 0) == [pid(3)]


def test_numwant_is_capped_and_zero_means_no_peers() -> None:
    s = swarms(numwant_cap=5)
    for n in range(20):
        ann(s, n, f"10.0.0.{n + 1}", 1)
    assert len(ann(s, 0, "10.0.0.1", 1, numwant=10**9)) == 5
    assert len(ann(s, 0, "10.0.0.1", 1)) == 5
    assert len(ann(s, 0, "10.0.0.1", 1, numwant=3)) == 3
    assert ann(s, 0, "10.0.0.1", 1, numwant=0) == []


@pytest.mark.parametrize("sizes", [(100, 100, 100, 100), (380, 10, 5, 5), (2, 398)])
def test_replies_are_distinct_keep_cross_rack_places_and_reach_everyone(
    sizes: tuple[int, ...],
) -> None:
    racks = RackMap({ipaddress.ip_network(f"10.{r}.0.0/16"): f"r{r}" for r in range(len(sizes))})
    s = Swarms(Limits(), racks.rack_of)
    n = 0
    for rack, size in enumerate(sizes):
        for i in range(size):
            ann(s, n, f"10.{rack}.{i // 200}.{i % 200 + 1}", 1)
            n += 1
    seen: set[bytes] = set()
    for _ in range(3000):
        got = ann(s, 0, "10.0.0.1", 1)
        assert len(got) == 50 and len(set(got)) == 50 and pid(0) not in got
        outside = [p for p in got if int.from_bytes(p[8:], "big") >= sizes[0]]
        assert len(outside) == max(2, 50 - (sizes[0] - 1))
        seen.update(got)
    assert len(seen) == n - 1


def test_peers_expire_after_about_two_intervals_and_stopped_removes_at_once() -> None:
    s = swarms(interval=100)
    ann(s, 1, "10.0.0.1", 1, now=0)
    ann(s, 2, "10.0.0.2", 1, now=150)
    assert s.expire(199) == 0
    assert s.expire(211) == 1
    assert ann(s, 3, "10.0.0.3", 1, now=212) == [pid(2)]
    ann(s, 2, "10.0.0.2", 1, now=213, event="stopped")
    assert ann(s, 3, "10.0.0.3", 1, now=214) == []
    assert s.stats()[HASH.hex()]["peers"] == 1


def test_completion_counts_left_reaching_zero_and_completed_event_once() -> None:
    s = swarms()
    ann(s, 1, "10.0.0.1", 0)  # the seeder: not a completion
    ann(s, 2, "10.0.0.2", 100)
    ann(s, 3, "10.0.0.3", 100)
    ann(s, 2, "10.0.0.2", 0)  # aria2c style: no event
    ann(s, 3, "10.0.0.3", 0, event="completed")
    ann(s, 3, "10.0.0.3", 0, event="completed")
    ann(s, 2, "10.0.0.2", 0)
    stats = s.stats()[HASH.hex()]
    assert stats == {"peers": 3, "seeders": 3, "leechers": 0, "completed": 2, "left": 0}
    ann(s, 4, "10.0.0.4", 100)
    ann(s, 4, "10.0.0.4", 0, event="stopped")  # done and gone in one announce
    ann(s, 5, "10.0.0.5", 100)
    req = parse_announce(announce_query(peer_id=pid(5), port=6005, event="stopped", left=None))
    s.announce(req, "10.0.0.5", 0)  # quit without saying left: not a completion
    stats = s.stats()[HASH.hex()]
    assert stats == {"peers": 3, "seeders": 3, "leechers": 0, "completed": 3, "left": 0}


def test_stats_sum_left_and_follow_updates() -> None:
    s = swarms()
    ann(s, 1, "10.0.0.1", 100)
    ann(s, 2, "10.0.0.2", 50)
    ann(s, 1, "10.0.0.1", 30)
    assert s.stats()[HASH.hex()]["left"] == 80
    assert s.scrape([HASH, b"z" * 20]) == {
        HASH: {"complete": 0, "downloaded": 0, "incomplete": 2},
        b"z" * 20: {"complete": 0, "downloaded": 0, "incomplete": 0},
    }


def test_caps_refuse_new_swarms_and_new_peers_but_keep_known_ones() -> None:
    s = swarms(max_swarms=1, max_peers_per_swarm=2)
    ann(s, 1, "10.0.0.1", 1)
    ann(s, 2, "10.0.0.2", 1)
    with pytest.raises(RequestError, match="full"):
        ann(s, 3, "10.0.0.3", 1)
    ann(s, 1, "10.0.0.1", 0)
    other = parse_announce(announce_query(info_hash=b"o" * 20))
    with pytest.raises(RequestError, match="too many swarms"):
        s.announce(other, "10.0.0.9", 0)


def test_a_peer_id_with_a_key_cannot_be_taken_over_from_another_address() -> None:
    s = swarms()
    ann(s, 1, "10.0.0.1", 1, key="secret")
    with pytest.raises(RequestError, match="in use"):
        ann(s, 1, "10.0.0.66", 1, key="guess")
    ann(s, 1, "10.0.0.7", 1, key="secret")  # the real peer moved
    assert s.stats()[HASH.hex()]["peers"] == 1


def test_a_restarted_client_on_the_same_address_replaces_its_old_entry() -> None:
    s = swarms()
    req = parse_announce(announce_query(peer_id=pid(1), port=7000))
    s.announce(req, "10.0.0.1", 0)
    req = parse_announce(announce_query(peer_id=pid(2), port=7000))
    s.announce(req, "10.0.0.1", 0)
    assert s.stats()[HASH.hex()]["peers"] == 1


def test_ip_parameter_is_used_only_when_accepted() -> None:
    req = parse_announce(announce_query(ip="10.9.9.9"))
    plain = Swarms(Limits(), RackMap({}).rack_of)
    trusting = Swarms(Limits(), RackMap({}).rack_of, accept_ip_param=True)
    plain.announce(req, "10.0.0.1", 0)
    trusting.announce(req, "10.0.0.1", 0)
    assert next(iter(plain)).peers[pid(1)].ip == "10.0.0.1"
    assert next(iter(trusting)).peers[pid(1)].ip == "10.9.9.9"


def test_own_rack_comes_first_then_other_racks_fill_the_reply() -> None:
    s = swarms(numwant_cap=10)
    for n in range(1, 5):
        ann(s, n, f"10.0.1.{n}", 1)
    for n in range(5, 40):
        ann(s, n, f"10.0.2.{n}", 1)
    got = ann(s, 1, "10.0.1.1", 1)
    assert len(got) == 10
    assert set(got[:3]) == {pid(2), pid(3), pid(4)}
    assert all(int.from_bytes(p[8:], "big") >= 5 for p in got[3:])
    # a big rack fills the reply from inside, but for the cross-rack places
    got = ann(s, 5, "10.0.2.5", 1)
    assert len(got) == 10
    assert all(int.from_bytes(p[8:], "big") >= 5 for p in got[:8])
    assert all(int.from_bytes(p[8:], "big") < 5 for p in got[8:])


def test_racks_file_maps_subnets_with_longest_prefix_and_falls_back_to_slash_24(
    tmp_path: Path,
) -> None:
    path = tmp_path / "racks"
    path.write_text("# racks\n10.1.0.0/24 a\n10.1.1.0/24 a  # same rack\n10.0.0.0/8 big\n\n")
    racks = RackMap.from_file(path)
    assert racks.rack_of("10.1.0.5") == racks.rack_of("10.1.1.9") == "a"
    assert racks.rack_of("10.7.0.1") == "big"
    assert racks.rack_of("192.168.5.7") == "192.168.5.0/24"
    path.write_text("10.1.0.0/33 a\n")
    with pytest.raises(ConfigError):
        RackMap.from_file(path)
    path.write_text("10.1.0.0/24\n")
    with pytest.raises(ConfigError):
        RackMap.from_file(path)


def test_allow_file_skips_comments_and_bad_lines() -> None:
    text = f"# releases\n{'ab' * 20}\n  {'CD' * 20}  # v2\nnothex{'0' * 34}\n\n{'1' * 39}\n"
    assert parse_allow_file(text) == {bytes.fromhex("ab" * 20), bytes.fromhex("cd" * 20)}


def test_allow_list_rereads_a_changed_file_at_once_for_a_new_hash(tmp_path: Path) -> None:
    path = tmp_path / "allow"
    path.write_text("aa" * 20 + "\n")
    clock = [0.0]
    allow = AllowList(str(path), clock=lambda: clock[0])
    assert bytes.fromhex("aa" * 20) in allow
    assert bytes.fromhex("bb" * 20) not in allow
    tmp = tmp_path / "allow.tmp"
    tmp.write_text("bb" * 20 + "\n")
    tmp.replace(path)
    assert bytes.fromhex("bb" * 20) in allow  # a miss rechecks at once
    assert bytes.fromhex("aa" * 20) not in allow
    path.unlink()
    clock[0] = 10.0
    assert bytes.fromhex("bb" * 20) not in allow


def test_ipv6_peers_go_in_peers6_and_ipv4_peers_in_peers() -> None:
    from fabmurder.tracker.server import Tracker, TrackerConfig

    tracker = Tracker(TrackerConfig())
    for n, ip in ((1, "10.0.0.1"), (2, "fd00::2")):
        tracker.route(announce_target(HASH, pid(n), 6000 + n, 0).encode(), ip)
    _, _, body = tracker.route(announce_target(HASH, pid(3), 6003, 5).encode(), "10.0.0.3")
    reply = bencodepy.decode(body)
    assert compact_peers(reply[b"peers"]) == [("10.0.0.1", 6001)]
    assert reply[b"peers6"] == compact_peer("fd00::2", 6002)
