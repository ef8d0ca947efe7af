"""The simulated fleet (fabmurder.testing.simfleet) answers a real murder.deploy as real hosts do.

A simulation, for the control plane only: the SSH servers, the tracker and
the seeder are real; the peers' agents are simulated (no libtorrent, no
data). No root is needed: the hosts listen on loopback addresses.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Context

from fabmurder import releases
from fabmurder.remote import FastConnection
from fabmurder.testing import simfleet
from fabmurder.testing.simhost import parse

PEERS = 12
AGENT = "/fmsim/agent/venv/bin/python"


def test_agent_command_lines_are_answered_in_process_and_the_rest_goes_to_bash() -> None:
    finish = (
        f"test -x {AGENT} || exit 0; {AGENT} -I -B -m fabmurder finish --temp-path /fmsim/tmp "
        "--role peer --tag v1 --clean && rm -rf -- /fmsim/tmp/upload-v1"
    )
    steps = parse(finish, AGENT)
    assert steps is not None
    assert [(op, words[0]) for op, words, _ in steps] == [
        (";", "test"),
        ("||", "exit"),
        (";", AGENT),
        ("&&", "rm"),
    ]
    put = f"{AGENT} -I -B -m fabmurder put --file /fmsim/tmp/v1.torrent --base64 >/dev/null"
    words = [AGENT, "-I", "-B", "-m", "fabmurder", "put", "--file", "/fmsim/tmp/v1.torrent"]
    assert parse(put, AGENT) == [(";", [*words, "--base64"], True)]
    for shell in (
        'printf "addr=%s\\n" "${SSH_CONNECTION:-}"',
        "ls | wc -l",
        "cd -- /x && ln -s a b",
    ):
        assert parse(shell, AGENT) is None, shell


@pytest.fixture(scope="module")
def sim() -> Iterator[simfleet.SimFleet]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    running = simfleet.up(PEERS + 1, name="tsim", release_size=256 * 1024)
    try:
        yield running
    finally:
        running.down()


def test_murder_deploy_installs_and_switches_every_simulated_peer_polling_almost_none(
    sim: simfleet.SimFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[str] = []
    real_run = FastConnection.run

    def counted(self: FastConnection, command: str, **kwargs: object) -> object:
        commands.append(command)  # a spy: the command still goes to the simulated host
        return real_run(self, command, **kwargs)

    monkeypatch.setattr(FastConnection, "run", counted)
    config = sim.fabric_config()
    config["murder"] = sim.murder(PEERS, tag="t1", timeout=60, poll_interval=0.5)
    deployed = releases.deploy(Context(config=config))

    assert sorted(deployed.report.succeeded) == sorted(
        sim.host_string(i) for i in range(2, PEERS + 2)
    )
    for i in range(2, PEERS + 2):
        root = sim.host_dir(i) / "rel"
        assert (root / "current").resolve() == (root / "releases" / "t1").resolve()
        marker = (root / "releases" / ".t1.sha256").read_text().strip()
        assert marker == deployed.report.sha256
    # the real tracker heard every simulated agent's reports; the watch followed its feed,
    # and each peer's verdict came from its finish reply: a poll only for a peer not heard yet
    assert [c for c in commands if "--while-seq" in c]
    assert len([c for c in commands if " poll " in c]) <= 4
    finishes = [c for c in commands if " finish " in c and "--role peer" in c]
    assert len(finishes) == PEERS
    log = (sim.host_dir(1) / "tmp" / "tracker.log").read_text()
    assert "Traceback" not in log
    assert json.loads((sim.state_dir / "simfleet.json").read_text())["port"] == sim.port


def test_a_simulated_host_refuses_an_unknown_client_key(
    sim: simfleet.SimFleet, tmp_path: Path
) -> None:
    import asyncssh
    import paramiko

    other = tmp_path / "other"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            sim.addresses[1], sim.port, username="root", key_filename=str(other),
            look_for_keys=False, allow_agent=False, timeout=10,
        )  # fmt: skip
    client.close()
