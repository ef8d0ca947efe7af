"""The performance work's pure parts: striped piece priorities, the paper model, phase timing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from fabmurder.host.swarm import STRIPE_PRIORITY, parse_stripe, stripe_priorities

# benchmarks/ is a top-level package of the repository, not of the installed project.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import model  # noqa: E402
from benchmarks.scaling import phase_times  # noqa: E402


@pytest.mark.parametrize(("pieces", "count"), [(256, 16), (10, 3), (5, 8), (1, 2)])
def test_every_piece_is_first_for_exactly_one_peer(pieces: int, count: int) -> None:
    firsts = [0] * pieces
    for index in range(count):
        for piece, prio in enumerate(stripe_priorities(pieces, index, count)):
            firsts[piece] += prio == STRIPE_PRIORITY
    assert firsts == [1] * pieces


def test_stripe_slices_are_contiguous_and_even() -> None:
    sizes = [stripe_priorities(256, i, 16).count(STRIPE_PRIORITY) for i in range(16)]
    assert sizes == [16] * 16
    prios = stripe_priorities(256, 3, 16)
    assert prios.index(STRIPE_PRIORITY) == 48 and prios[63] == STRIPE_PRIORITY
    assert prios[64] != STRIPE_PRIORITY


@pytest.mark.parametrize("text", ["3", "3/3", "-1/4", "a/b", "1/0", ""])
def test_a_malformed_stripe_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_stripe(text)


def test_a_stripe_parses_to_index_and_count() -> None:
    assert parse_stripe("0/16") == (0, 16)
    assert parse_stripe("15/16") == (15, 16)


def test_the_model_keeps_the_swarm_near_s_over_b_and_the_push_linear() -> None:
    size, rate, piece = 64 << 20, 5.975e6, 256 << 10
    ideal = size / rate
    for n in (2, 16, 1000, 10_000):
        assert ideal < model.swarm_time(n, size, rate, piece) < 1.15 * ideal
        assert model.central_time(n, size, rate) == pytest.approx(0.3 + n * ideal)
    assert model.swarm_time(16, size, rate, piece, redundancy=1.5) > 1.5 * ideal
    assert model.control_time(1000) > model.control_time(1000, parallel=256)


def test_phases_follow_the_order_the_events_came_in() -> None:
    events = [
        (101.0, "installing the agent"),
        (102.0, "creating the torrent"),
        (103.0, "starting the tracker"),
        (104.0, "starting 2 peer(s)"),
        (105.0, "seeding"),
        (120.0, "downloading on 2 peer(s)"),
        (130.0, "stopping seeding and peering, cleaning temp files"),
    ]
    phases = phase_times(events, 100.0, 132.0, 106.0, [117.0, 118.0], [118.5, 119.0])
    assert phases["peer_agent_start"] == 1.0
    assert phases["seeder_start"] == 1.0
    assert phases["transfer"] == 12.0
    assert phases["verify_and_extract"] == 1.0
    assert phases["stop_and_clean"] == 2.0
    assert sum(phases.values()) == pytest.approx(32.0)
