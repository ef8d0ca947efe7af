"""At scale on real hosts: ``murder.deploy`` to 64 peers spread over four /24 networks.

The fleet is 65 real sshd hosts in their own network namespaces. The agent
is the one the session's deploy kit installed (through the real setup) on
its first host, copied once and mounted read-only on every host here, so
that 65 hosts cost one venv of memory, not 65.

What this shows: every peer installs and switches; the watch follows the
swarm through the tracker's progress feed and takes each peer's verdict
from its ``finish`` reply, so it polls almost no peer over SSH in the whole
run (it read each one once before, and about once a second before the
feed); and the control process's CPU per host is printed (measured, not
judged: speed is the benchmark's business).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabmurder import releases
from fabmurder.remote import FastConnection
from fabmurder.report import Event
from fabmurder.testing.deploykit import AGENT, DeployKit
from fabmurder.testing.fleet import Fleet, down, sibling_name, up

PEERS = 64
SHARED = Path("/run/fabmurder")


@pytest.fixture(scope="module")
def scale(kit: DeployKit, fleet: Fleet) -> Iterator[DeployKit]:
    """A fleet of PEERS + 1 hosts over 4 racks, sharing the kit's installed agent read-only."""
    name = sibling_name(fleet.name, "sc")
    source = SHARED / f"{name}-agent"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    fleet.run_in(kit.fleet.host(1), ["cp", "-a", f"{AGENT}/.", str(source)])
    big = up(PEERS + 1, name=name, racks=4, shared={AGENT: str(source)})
    try:
        yield DeployKit(big, kit.wheel_dir)
    finally:
        down(name)
        shutil.rmtree(source, ignore_errors=True)


@pytest.mark.fleet
def test_murder_deploy_reaches_64_peers_over_four_racks_polling_almost_no_peer(
    scale: DeployKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[str] = []
    real_run = FastConnection.run

    def counted(self: FastConnection, command: str, **kwargs: Any) -> Any:
        commands.append(command)  # a spy: the real command still runs on the real host
        return real_run(self, command, **kwargs)

    monkeypatch.setattr(FastConnection, "run", counted)
    scale.make_tree(1, scale.files_path, 1024 * 1024)
    peers = range(2, PEERS + 2)
    murder = scale.murder(peers=peers, tag="s1", timeout=120, poll_interval=1.0)
    events: list[Event] = []
    cpu, wall = time.process_time(), time.monotonic()
    deployed = releases.deploy(scale.context(murder), on_event=events.append)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall

    hosts = [scale.fleet.host(i) for i in peers]
    assert sorted(deployed.report.succeeded) == sorted(h.host_string for h in hosts)
    for host in hosts:
        link = scale.sh(host, 'readlink -- "$1"', f"{scale.destination_path}/current")
        assert link.strip().endswith("s1"), (host.name, link)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert not warnings, warnings
    polls = [c for c in commands if " poll " in c]
    follows = [c for c in commands if "--while-seq" in c]
    assert follows, "the watch never read the tracker's progress feed"
    # no poll of a peer the feed reported installed: finish's reply confirms it; a poll
    # only for a peer the tracker had not heard from yet (UNHEARD s into the watch)
    assert len(polls) <= 8, f"{len(polls)} polls of {PEERS} peers in {wall:.1f} s"
    finishes = [c for c in commands if " finish " in c and "--role peer" in c]
    assert len(finishes) == PEERS, f"{len(finishes)} finish commands of peers"
    phases = [f"{e.at - events[0].at:5.1f} s {e.message}" for e in events if e.kind == "phase"]
    print("\n" + "\n".join(phases))
    print(
        f"{PEERS} peers: murder.deploy {wall:.1f} s, control CPU {cpu:.2f} s "
        f"({1000 * cpu / PEERS:.0f} ms per peer), {len(polls)} peer polls, "
        f"{len(follows)} feed reads, {len(commands)} SSH commands"
    )
