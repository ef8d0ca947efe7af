"""Hold peers in index-addressed lists and draw random replies from them.

A peer sits in two :class:`Pool` lists at once (its swarm's and its rack's),
and remembers its index in each, so adding, removing or moving it between
seeders and leechers is O(1). :func:`sample` draws ``k`` distinct random
peers in O(k), whatever the size of the lists.
"""

from __future__ import annotations

import random
from math import gcd

from fabmurder.tracker.protocol import compact_peer

_rand = random.random


class Peer:
    """One peer of one swarm."""

    __slots__ = (
        "peer_id",
        "ip",
        "port",
        "compact",
        "key",
        "left",
        "rack",
        "last_seen",
        "counted",
        "initial_seed",
        "pos",
    )

    def __init__(self, peer_id: bytes, ip: str, port: int, rack: str) -> None:
        self.peer_id = peer_id
        self.ip = ip
        self.port = port
        self.compact = compact_peer(ip, port)
        self.rack = rack
        self.key: bytes | None = None
        self.left = -1  # not yet in any list
        self.last_seen = 0.0
        self.counted = False
        #: joined with the whole content (the deploy's seeder), not finished here
        self.initial_seed = False
        # index in [swarm-wide list, rack list]
        self.pos = [0, 0]


class Pool:
    """Seeders and leechers of one scope (a whole swarm or one rack)."""

    __slots__ = ("seeds", "leechers", "slot")

    def __init__(self, slot: int) -> None:
        self.seeds: list[Peer] = []
        self.leechers: list[Peer] = []
        self.slot = slot  # which index of Peer.pos this pool uses

    def __len__(self) -> int:
        return len(self.seeds) + len(self.leechers)

    def add(self, peer: Peer) -> None:
        group = self.seeds if peer.left == 0 else self.leechers
        peer.pos[self.slot] = len(group)
        group.append(peer)

    def remove(self, peer: Peer) -> None:
        group = self.seeds if peer.left == 0 else self.leechers
        index = peer.pos[self.slot]
        last = group.pop()
        if last is not peer:
            group[index] = last
            last.pos[self.slot] = index

    def candidates(self, for_seeder: bool) -> tuple[list[Peer], list[Peer]]:
        """Return the lists a reply may draw from: seeders get no seeders."""
        return ([], self.leechers) if for_seeder else (self.seeds, self.leechers)


def _stride(n: int) -> int:
    """Return a random step in ``1..n-1`` coprime with ``n`` (1 when n < 3)."""
    if n < 3:
        return 1
    while True:
        step = 1 + int(_rand() * (n - 1))
        if gcd(step, n) == 1:
            return step


def sample(
    lists: tuple[list[Peer], list[Peer]], k: int, asker: Peer, avoid_rack: str | None = None
) -> list[Peer]:
    """Pick up to ``k`` distinct random peers from two lists.

    The asker is left out, and so is every peer of ``avoid_rack`` when given.
    A large pool is walked along a random arithmetic progression (random
    start, random step coprime with its size): distinct indices in O(k)
    without a set of drawn indices, and a different random subset each time.
    """
    first, second = lists
    n_first = len(first)
    n = n_first + len(second)
    if k <= 0 or n == 0:
        return []
    if 2 * k >= n:
        everyone = [p for p in first + second if p is not asker and p.rack != avoid_rack]
        random.shuffle(everyone)
        return everyone[:k]
    if avoid_rack is None:
        step = _stride(n)
        start = int(_rand() * n)
        walk = range(start, start + step * (k + 1), step)
        if not n_first:
            picked = [second[i % n] for i in walk]
        elif n_first == n:
            picked = [first[i % n] for i in walk]
        else:
            picked = [first[j] if (j := i % n) < n_first else second[j - n_first] for i in walk]
        if asker in picked:
            picked.remove(asker)
        else:
            picked.pop()
        return picked
    # Outside the rack is at least a quarter of the pool here: independent
    # draws (a rack may sit in one stretch of the list) need about 4k tries.
    picked = []
    seen: set[int] = set()
    for _ in range(16 * n):
        i = int(_rand() * n)
        if i in seen:
            continue
        seen.add(i)
        peer = first[i] if i < n_first else second[i - n_first]
        if peer is not asker and peer.rack != avoid_rack:
            picked.append(peer)
            if len(picked) == k:
                break
    return picked
