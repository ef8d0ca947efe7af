"""A paper model of a deploy's time: swarm against central push, for fleets too big to run here.

Assumptions (``docs/performance.md`` discusses them against the fleet):

- every host has the same NIC rate ``B`` (payload bytes per second) up and
  down, and the network core is not the bottleneck (full bisection);
- the release is ``S`` bytes in pieces of ``p`` bytes; a piece can be
  forwarded only once it is whole and verified;
- **central push**: one seeder sends ``N`` full copies through its one NIC,
  so ``T = N * S / B`` plus a per-run SSH start-up;
- **swarm**: each peer must receive ``S`` (``S / B``) and the seeder must
  send every piece at least once (``r * S / B`` for a redundancy ``r >= 1``:
  the share of pieces the seeder sends more than once). With the peers'
  upload capacity ``N * B`` far above the demand, pieces spread like a
  binomial tree behind the seeder, so the last piece needs about
  ``log2(N)`` more piece times ``p / B`` to reach everyone;
- the control machine starts the peer agents over SSH, ``parallel`` at a
  time, each start taking ``t_start`` seconds, before the seeder starts:
  that time adds to the deploy, not to the transfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: the control side's default SSH fan-out (murder.parallel)
PARALLEL = 32
#: seconds one peer start takes over SSH (mkdir, copy the torrent, start the
#: daemon): the fleet's peer_agent_start phase at N = 16 (all in one wave)
T_START = 1.2
#: seconds from the start of seeding to the first bytes flowing (the seeder's
#: announce and connections)
T_CONNECT = 0.3


def swarm_time(
    n: int,
    size: int,
    rate: float,
    piece_size: int,
    redundancy: float = 1.0,
    t_connect: float = T_CONNECT,
) -> float:
    """Return the modelled seconds from the start of seeding to the last complete peer.

    :param n: peers; :param size: release bytes ``S``; :param rate: ``B`` in
        bytes/s; :param piece_size: ``p``; :param redundancy: how many times
        the seeder sends ``S`` in all (``r``, at least 1).
    """
    if n <= 0:
        return 0.0
    transfer = max(1.0, redundancy) * size / rate
    spread = math.ceil(math.log2(n)) * piece_size / rate if n > 1 else 0.0
    return t_connect + transfer + spread


def control_time(n: int, parallel: int = PARALLEL, t_start: float = T_START) -> float:
    """Return the modelled seconds the control machine needs to start ``n`` peer agents.

    The peers start before the seeder, in waves of ``parallel`` SSH sessions.
    """
    return math.ceil(n / parallel) * t_start


def central_time(n: int, size: int, rate: float, t_connect: float = 0.3) -> float:
    """Return the modelled seconds for one host to copy ``size`` bytes to ``n`` hosts."""
    return t_connect + n * size / rate


def table(
    size: int, rate: float, piece_size: int | Callable[[int], int], redundancy: float = 1.25
) -> list[dict[str, Any]]:
    """Return the model at N = 16, 1,000 and 10,000, for ``r`` = 1 and ``redundancy``.

    :param piece_size: bytes, or a function of N giving them (the default's rule).
    """
    rows = []
    for n in (16, 1000, 10_000):
        p = piece_size(n) if callable(piece_size) else piece_size
        rows.append(
            {
                "n": n,
                "ideal_s": round(size / rate, 2),
                "piece_size": p,
                "swarm_s_r1": round(swarm_time(n, size, rate, p), 2),
                "swarm_s_r": round(swarm_time(n, size, rate, p, redundancy), 2),
                "redundancy": redundancy,
                "control_start_s": round(control_time(n), 1),
                "control_start_s_parallel_256": round(control_time(n, 256), 1),
                "central_s": round(central_time(n, size, rate), 1),
            }
        )
    return rows


if __name__ == "__main__":
    import json

    mib = 1024 * 1024
    b = 50e6 / 8 * 0.956
    from fabmurder.host.metainfo import default_piece_size

    print(json.dumps(table(64 * mib, b, lambda n: default_piece_size(64 * mib, n)), indent=2))
