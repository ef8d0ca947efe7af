"""Count what the tracker does, and render it in Prometheus' text format.

``/metrics`` (under the tracker's token, like ``/stats``) serves these
lines, so that an operator's Prometheus can scrape the tracker of a
long-lived deploy host. Everything here is read from state the tracker
keeps anyway; rendering is O(swarms), never O(peers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabmurder.tracker.swarm import Swarms


@dataclass(slots=True)
class Counters:
    """Counters the request handlers bump (the swarm state counts announces itself)."""

    scrapes: int = 0
    #: announces and scrapes answered with a bencoded failure reason (or a 404 under a deploy token)
    failures: int = 0
    #: requests for a path the tracker does not serve
    not_found: int = 0


def _lines(name: str, kind: str, text: str, samples: list[tuple[str, int]]) -> list[str]:
    out = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    out += [f"{name}{labels} {value}" for labels, value in samples]
    return out


def render(
    swarms: Swarms, counters: Counters, open_connections: int, refused: int, reports: int = 0
) -> bytes:
    """Return the ``/metrics`` body (text exposition format 0.0.4)."""
    seeders = leechers = peers = completed = 0
    for swarm in swarms:
        seeders += swarm.seeders
        leechers += swarm.leechers
        peers += len(swarm.peers)
        completed += swarm.completed
    prefix = "fabmurder_tracker_"
    lines: list[str] = []
    for name, kind, text, value in (
        ("announces_total", "counter", "Announces received.", swarms.announces),
        ("scrapes_total", "counter", "Scrapes received.", counters.scrapes),
        ("reports_total", "counter", "Progress reports received.", reports),
        ("failures_total", "counter", "Announces and scrapes refused.", counters.failures),
        ("not_found_total", "counter", "Requests for paths not served.", counters.not_found),
        ("connections_refused_total", "counter", "Connections refused at a cap.", refused),
        ("connections", "gauge", "Open client connections.", open_connections),
        ("swarms", "gauge", "Swarms tracked.", len(swarms.swarms)),
        ("peers", "gauge", "Peers across all swarms.", peers),
        ("seeders", "gauge", "Peers with the whole content.", seeders),
        ("leechers", "gauge", "Peers still downloading.", leechers),
        ("completed", "gauge", "Peers that finished, in the swarms tracked.", completed),
    ):
        lines += _lines(prefix + name, kind, text, [("", value)])
    return ("\n".join(lines) + "\n").encode()
