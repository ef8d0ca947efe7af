"""Keep swarm state: peers, expiry, caps, rack-ordered peer lists and stats.

Everything here is plain synchronous Python called from the server's single
asyncio thread, never across an ``await``: each announce mutates the state
and computes its reply in one step, so no lock is needed and none is held
across I/O.

A swarm keeps its peers in :class:`~fabmurder.tracker.peers.Pool` lists
(seeders and leechers, swarm-wide and per rack), so that a peer is added,
removed or moved in O(1) and a random reply of ``k`` peers costs O(k),
whatever the swarm's size.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import TypedDict

from fabmurder.tracker.peers import Peer, Pool, sample
from fabmurder.tracker.protocol import Announce, RequestError, ScrapeFile, compact_peer

_rand = random.random


class SwarmStats(TypedDict):
    """One swarm in the ``/stats`` JSON (the controller's progress bar reads it)."""

    peers: int
    seeders: int
    leechers: int
    completed: int
    left: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Timing and caps of a tracker."""

    interval: int = 1800
    min_interval: int = 900
    numwant_cap: int = 50
    # A peer that joined with the whole content (the deploy's seeder) may learn
    # every leecher at once: it must reach each peer for the striped first pass.
    seeder_numwant_cap: int = 5000
    # Places in every reply kept for peers of other racks, so no rack is an island.
    cross_rack: int = 2
    max_swarms: int = 1000
    max_peers_per_swarm: int = 50000
    # One host runs one agent per swarm; a few more allow for NAT, not for a flood.
    max_peers_per_ip: int = 256
    # A peer expires when it missed about two announces.
    expire_factor: float = 2.0
    # An empty swarm is forgotten after this many seconds without peers.
    empty_swarm_ttl: float = 3600.0

    @property
    def peer_ttl(self) -> float:
        """Seconds after its last announce that a peer is dropped."""
        return self.interval * self.expire_factor + min(10.0, self.interval / 2)


class Swarm:
    """The peers of one info-hash."""

    def __init__(self, info_hash: bytes, cross_rack: int = 2) -> None:
        self.info_hash = info_hash
        self.cross_rack = cross_rack
        self.peers: dict[bytes, Peer] = {}
        self.by_addr: dict[bytes, Peer] = {}
        self.per_ip: dict[str, int] = {}
        self.all = Pool(0)
        self.racks: dict[str, Pool] = {}
        self.completed = 0
        self.left_total = 0
        self.empty_since: float | None = None

    @property
    def seeders(self) -> int:
        """Return how many peers have the whole content."""
        return len(self.all.seeds)

    @property
    def leechers(self) -> int:
        """Return how many peers are still downloading."""
        return len(self.all.leechers)

    def add(self, peer: Peer, left: int) -> None:
        """Insert a new peer with ``left`` bytes to go."""
        peer.left = left
        self.peers[peer.peer_id] = peer
        self.by_addr[peer.compact] = peer
        self.per_ip[peer.ip] = self.per_ip.get(peer.ip, 0) + 1
        self.all.add(peer)
        rack = self.racks.get(peer.rack)
        if rack is None:
            rack = self.racks[peer.rack] = Pool(1)
        rack.add(peer)
        self.left_total += left
        self.empty_since = None

    def remove(self, peer: Peer, now: float) -> None:
        """Drop a peer at once."""
        del self.peers[peer.peer_id]
        if self.by_addr.get(peer.compact) is peer:
            del self.by_addr[peer.compact]
        left = self.per_ip[peer.ip] - 1
        if left:
            self.per_ip[peer.ip] = left
        else:
            del self.per_ip[peer.ip]
        self.all.remove(peer)
        rack = self.racks[peer.rack]
        rack.remove(peer)
        if not len(rack):
            del self.racks[peer.rack]
        self.left_total -= peer.left
        if not self.peers:
            self.empty_since = now

    def update_left(self, peer: Peer, left: int) -> None:
        """Record a new ``left``, moving the peer between seeders and leechers."""
        self.left_total += left - peer.left
        if (left == 0) != (peer.left == 0):
            rack = self.racks[peer.rack]
            self.all.remove(peer)
            rack.remove(peer)
            peer.left = left
            self.all.add(peer)
            rack.add(peer)
        peer.left = left

    def pick(self, asker: Peer, k: int) -> list[Peer]:
        """Choose up to ``k`` peers for ``asker``: its own rack first, then the others.

        ``cross_rack`` places are kept for peers of other racks (when there
        are any), so that no rack becomes an island without the seeder; the
        other racks also fill whatever the asker's rack cannot. Seeders get
        only leechers, and the asker never gets itself.
        """
        for_seeder = asker.left == 0
        rack = self.racks[asker.rack]
        total = len(self.all.leechers) + (0 if for_seeder else len(self.all.seeds))
        in_rack = len(rack.leechers) + (0 if for_seeder else len(rack.seeds))
        others = total - in_rack
        reserve = min(self.cross_rack, others, k)
        picked = sample(rack.candidates(for_seeder), k - reserve, asker)
        need = k - len(picked)
        if need <= 0 or others <= 0:
            return picked
        return picked + self._pick_outside(asker.rack, for_seeder, need, others, total, asker)

    def _pick_outside(
        self, my_rack: str, for_seeder: bool, need: int, others: int, total: int, asker: Peer
    ) -> list[Peer]:
        if 4 * others >= total and others > 2 * need:
            # Most candidates are outside the rack: draw swarm-wide, skip the rack.
            return sample(self.all.candidates(for_seeder), need, asker, my_rack)
        pools = [
            pool.candidates(for_seeder) for name, pool in self.racks.items() if name != my_rack
        ]
        if others <= 2 * need:
            outside = [p for seeds, leechers in pools for p in seeds + leechers]
            random.shuffle(outside)
            return outside[:need]
        # A big rack and a few outsiders: draw indices over the other racks only.
        bounds = list(accumulate(len(seeds) + len(leechers) for seeds, leechers in pools))
        chosen: set[int] = set()
        while len(chosen) < need:
            chosen.add(int(_rand() * others))
        picked = []
        for index in chosen:
            which = bisect_right(bounds, index)
            offset = index - (bounds[which - 1] if which else 0)
            seeds, leechers = pools[which]
            picked.append(seeds[offset] if offset < len(seeds) else leechers[offset - len(seeds)])
        return picked

    def stats(self) -> SwarmStats:
        """Return this swarm's line of ``/stats``."""
        return {
            "peers": len(self.peers),
            "seeders": self.seeders,
            "leechers": self.leechers,
            "completed": self.completed,
            "left": self.left_total,
        }


@dataclass(slots=True)
class AnnounceResult:
    """What an announce reply carries, before it is encoded."""

    complete: int
    incomplete: int
    peers: list[Peer]


class Swarms:
    """All swarms of a tracker, with the caps that keep memory bounded."""

    def __init__(
        self, limits: Limits, rack_of: Callable[[str], str], accept_ip_param: bool = False
    ) -> None:
        self.limits = limits
        self.rack_of = rack_of
        self.accept_ip_param = accept_ip_param
        self.swarms: dict[bytes, Swarm] = {}
        self.announces = 0

    def __iter__(self) -> Iterator[Swarm]:
        return iter(self.swarms.values())

    def numwant(self, asked: int | None, initial_seed: bool = False) -> int:
        """Cap a client's ``numwant`` (absent means the cap); an initial seed has its own cap."""
        limits = self.limits
        cap = limits.seeder_numwant_cap if initial_seed else limits.numwant_cap
        if asked is None:
            return limits.numwant_cap
        return cap if asked > cap else asked

    def announce(self, req: Announce, source_ip: str, now: float) -> AnnounceResult:
        """Apply one announce and choose the peers to return.

        :param source_ip: the address the request came from; the peer's address
            unless the tracker accepts the ``ip`` parameter and one was sent.
        :raises RequestError: when a cap is reached, or the peer id is known
            with a ``key`` that this request does not carry (BEP 7's ``key``
            proves a peer across announces, so nobody else can move, stop or
            replace it by its peer id alone).
        """
        self.announces += 1
        ip = req.ip if (req.ip and self.accept_ip_param) else source_ip
        swarm = self.swarms.get(req.info_hash)
        if swarm is None:
            if req.event == b"stopped":
                return AnnounceResult(0, 0, [])
            if len(self.swarms) >= self.limits.max_swarms:
                raise RequestError("tracker is full: too many swarms")
            swarm = self.swarms[req.info_hash] = Swarm(req.info_hash, self.limits.cross_rack)
        peer = swarm.peers.get(req.peer_id)
        was_counted = False
        if peer is not None and peer.key is not None and req.key != peer.key:
            raise RequestError("peer_id is in use by another peer")
        if peer is not None and (peer.ip != ip or peer.port != req.port):
            # The peer moved (new port or address): re-file it under the new one.
            was_counted = peer.counted
            swarm.remove(peer, now)
            peer = None
        if req.event == b"stopped":
            if peer is not None:
                if req.left == 0 and peer.left > 0 and not peer.counted:
                    # Finished and left at once (aria2c with --seed-time=0).
                    swarm.completed += 1
                swarm.remove(peer, now)
            return AnnounceResult(swarm.seeders, swarm.leechers, [])
        if peer is None:
            clash = swarm.by_addr.get(compact_peer(ip, req.port))
            if clash is not None:
                # Same address and port, new peer id: the client restarted (with a
                # new key, so the key cannot be asked for here).
                swarm.remove(clash, now)
            if len(swarm.peers) >= self.limits.max_peers_per_swarm:
                raise RequestError("swarm is full")
            if swarm.per_ip.get(ip, 0) >= self.limits.max_peers_per_ip:
                raise RequestError("too many peers from this address in the swarm")
            peer = Peer(req.peer_id, ip, req.port, self.rack_of(ip))
            peer.key = req.key
            peer.counted = was_counted or req.event == b"completed"
            peer.initial_seed = req.left == 0 and not peer.counted
            swarm.add(peer, req.left)
            if peer.counted and not was_counted:
                swarm.completed += 1
        else:
            if peer.left and not req.left and not peer.counted:
                # aria2c never sends event=completed: left reaching 0 counts too.
                peer.counted = True
                swarm.completed += 1
            elif req.event == b"completed" and not peer.counted:
                peer.counted = True
                swarm.completed += 1
            if req.left != peer.left:
                swarm.update_left(peer, req.left)
        peer.last_seen = now
        k = self.numwant(req.numwant, peer.initial_seed and peer.left == 0)
        picked = swarm.pick(peer, k) if k else []
        return AnnounceResult(swarm.seeders, swarm.leechers, picked)

    def scrape(self, info_hashes: list[bytes]) -> dict[bytes, ScrapeFile]:
        """Return scrape entries for these info-hashes (all swarms when empty)."""
        if not info_hashes:
            info_hashes = list(self.swarms)
        files: dict[bytes, ScrapeFile] = {}
        for info_hash in info_hashes:
            swarm = self.swarms.get(info_hash)
            if swarm is None:
                files[info_hash] = {"complete": 0, "downloaded": 0, "incomplete": 0}
            else:
                files[info_hash] = {
                    "complete": swarm.seeders,
                    "downloaded": swarm.completed,
                    "incomplete": swarm.leechers,
                }
        return files

    def expire(self, now: float) -> int:
        """Drop peers that missed about two announces and long-empty swarms; count peers dropped."""
        deadline = now - self.limits.peer_ttl
        dropped = 0
        for info_hash, swarm in list(self.swarms.items()):
            stale = [p for p in swarm.peers.values() if p.last_seen < deadline]
            for peer in stale:
                swarm.remove(peer, now)
            dropped += len(stale)
            if (
                swarm.empty_since is not None
                and now - swarm.empty_since > self.limits.empty_swarm_ttl
            ):
                del self.swarms[info_hash]
        return dropped

    def keep_only(self, allowed: frozenset[bytes]) -> None:
        """Forget swarms whose info-hash left the allow-list."""
        for info_hash in [h for h in self.swarms if h not in allowed]:
            del self.swarms[info_hash]

    def stats(self) -> dict[str, SwarmStats]:
        """Return the ``swarms`` object of ``/stats``, keyed by info-hash hex."""
        return {h.hex(): s.stats() for h, s in self.swarms.items()}

    def peer_count(self) -> int:
        """Return the number of peers across all swarms."""
        return sum(len(s.peers) for s in self.swarms.values())
