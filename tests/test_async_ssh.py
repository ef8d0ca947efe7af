"""The asyncssh backend (``murder.ssh_backend: asyncssh``): the pool's interface, one loop thread.

Against the simulated fleet's real SSH servers (asyncssh on loopback, no
root needed) for the connection's behaviour and the thread count, and
against the session's real sshd hosts for a whole ``releases.deploy``, the
host-key refusals and SFTP to a real home directory. Nothing here is timed.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from fabric import Config
from invoke import Context
from invoke.exceptions import CommandTimedOut, UnexpectedExit
from test_known_hosts import count_parsed_lines, write_known_hosts

from fabmurder import releases
from fabmurder.async_ssh import AsyncConnection
from fabmurder.config import settings
from fabmurder.errors import ConfigError, HostError
from fabmurder.remote import QUIET, ConnectionPool, FastConnection, feeding, open_pool
from fabmurder.report import Event
from fabmurder.ssh_loop import EventLoop
from fabmurder.testing import simfleet
from fabmurder.testing.deploykit import DeployKit

HOSTS = 48
PARALLEL = 4
#: threads besides the fan-out's workers: the main one, the event loop's, its resolvers, pytest's
SPARE = 6


def sim_name() -> str:
    return os.environ.get("FABMURDER_FLEET_NAME", "test")[:3] + "-as"


@pytest.fixture(scope="module")
def sim() -> Iterator[simfleet.SimFleet]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    running = simfleet.up(HOSTS + 1, name=sim_name(), release_size=64 * 1024)
    try:
        yield running
    finally:
        running.down()


def sim_pool(sim: simfleet.SimFleet, **kwargs: Any) -> ConnectionPool:
    options: dict[str, Any] = {
        "parallel": PARALLEL, "known_hosts": (str(sim.known_hosts_path),), "backend": "asyncssh"
    }  # fmt: skip
    return ConnectionPool(sim.fabric_config(), **{**options, **kwargs})


def test_the_backend_is_chosen_by_murder_ssh_backend_and_fabric_stays_the_default() -> None:
    assert settings(Context()).ssh_backend == "fabric"
    config = Config(overrides={"murder": {"ssh_backend": "asyncssh", "peers": ["web1"]}})
    s = settings(Context(config=config))
    with open_pool(Context(config=config), s) as pool:
        assert pool.backend == "asyncssh"
        conn = pool.get("deploy@web1:2200")
        assert isinstance(conn, AsyncConnection)
        assert (conn.user, conn.host, conn.port, conn.original_host) == (
            "deploy",
            "web1",
            2200,
            "web1",
        )
        assert not conn.is_connected
        assert pool.host_of(conn) == "deploy@web1:2200"
    wrong = Config(overrides={"murder": {"ssh_backend": "libssh"}})
    with pytest.raises(ConfigError, match="ssh_backend must be one of fabric, asyncssh"):
        settings(Context(config=wrong))


@pytest.mark.parametrize(
    "overrides, what",
    [
        ({"gateway": "bastion"}, "a gateway"),
        ({"forward_agent": True}, "agent forwarding"),
        ({"connect_kwargs": {"sock": object()}}, "connect_kwargs sock"),
    ],
)
def test_a_fabric_feature_the_backend_lacks_is_refused_not_ignored(
    overrides: dict[str, Any], what: str
) -> None:
    pool = ConnectionPool(Config(overrides=overrides), backend="asyncssh")
    with pool, pytest.raises(ConfigError, match=f"does not support {what}.*web1"):
        pool.get("web1")


def test_a_proxyjump_in_the_ssh_config_is_refused(tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host web1\n    ProxyJump bastion\n")
    config = Config(runtime_ssh_path=str(ssh_config))
    with ConnectionPool(config, backend="asyncssh") as pool:
        with pytest.raises(ConfigError, match="gateway"):
            pool.get("web1")
        assert pool.get("web2").host == "web2"


def test_user_port_and_identity_files_come_from_what_fabric_resolved(tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host db1\n    HostName 10.1.2.3\n    User ops\n    Port 2201\n    IdentityFile /keys/db1\n"
    )
    config = Config(
        overrides={"connect_kwargs": {"key_filename": ["/keys/all"]}, "timeouts": {"connect": 7}},
        runtime_ssh_path=str(ssh_config),
    )
    with ConnectionPool(config, backend="asyncssh", strict_host_keys=False) as pool:
        conn = pool.get("db1")
    assert (conn.host, conn.user, conn.port, conn.connect_timeout) == ("10.1.2.3", "ops", 2201, 7)
    assert conn.connect_kwargs["key_filename"] == ["/keys/all", "/keys/db1"]


def test_connections_share_one_loop_thread_so_threads_stay_below_parallel_plus_a_few(
    sim: simfleet.SimFleet,
) -> None:
    hosts = [sim.host_string(i) for i in range(1, HOSTS + 1)]
    before = threading.active_count()
    seen: list[int] = []

    def use(conn: Any) -> int:
        conn.open()
        seen.append(threading.active_count())
        return int(conn.run("true", **QUIET).exited)

    with sim_pool(sim) as pool:
        results = pool.fan_out(hosts, use)
        assert results.failed == {}
        assert all(pool.get(h).is_connected for h in hosts)
        held = threading.active_count()
        names = sorted(t.name for t in threading.enumerate())
    assert len(hosts) > PARALLEL + SPARE  # Paramiko would hold one thread per host here
    assert max(seen) <= before + PARALLEL + SPARE, names
    assert held <= before + SPARE, names
    assert threading.active_count() <= before  # close() ends the loop's thread too


def test_a_non_zero_exit_is_a_result_with_warn_and_an_unexpected_exit_without(
    sim: simfleet.SimFleet,
) -> None:
    with sim_pool(sim) as pool:
        conn = pool.get(sim.host_string(2))
        result = conn.run("echo out; echo err >&2; exit 3", **QUIET)
        assert (result.exited, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert result.command == "echo out; echo err >&2; exit 3"
        assert not result.ok and result.failed
        with pytest.raises(UnexpectedExit) as raised:
            conn.run("exit 4", hide=True, warn=False)
        assert raised.value.result.exited == 4
        with pytest.raises(CommandTimedOut):
            conn.run("sleep 30", timeout=0.5, **QUIET)
        assert conn.run("echo again", **QUIET).stdout == "again\n"  # the connection survives


def test_stdin_text_arrives_then_end_of_file(sim: simfleet.SimFleet) -> None:
    text = "line one\n" + "x" * 200_000 + "\nthe end\n"
    with sim_pool(sim) as pool:
        conn = pool.get(sim.host_string(3))
        assert conn.run("cat", **feeding(text)).stdout == text
        # without in_stream the command's stdin is closed: cat ends at once
        assert conn.run("cat; echo done", **QUIET).stdout == "done\n"


def test_an_unknown_or_changed_host_key_is_refused_on_the_simulated_fleet(
    sim: simfleet.SimFleet, tmp_path: Path
) -> None:
    lines = sim.known_hosts_path.read_text().splitlines()
    changed, unknown = sim.addresses[4], sim.addresses[5]
    other = [ln for ln in lines if ln.startswith(f"[{sim.addresses[6]}]")][0].split()[1:]
    edited = []
    for line in lines:
        if line.startswith(f"[{changed}]"):
            line = f"[{changed}]:{sim.port} {' '.join(other)}"
        elif line.startswith(f"[{unknown}]"):
            continue
        edited.append(line)
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(edited) + "\n")
    hosts = [sim.host_string(i) for i in (5, 6, 4)]
    with sim_pool(sim, known_hosts=(str(known),)) as pool:
        results = pool.fan_out(hosts, lambda conn: conn.run("true", **QUIET).exited)
    assert results.succeeded == {hosts[2]: 0}
    assert isinstance(results[hosts[0]], HostError) and isinstance(results[hosts[1]], HostError)
    assert "host key" in results.failed[hosts[0]] and "does not match" in results.failed[hosts[0]]
    assert "not found in known_hosts" in results.failed[hosts[1]]
    with sim_pool(sim, known_hosts=(str(known),), strict_host_keys=False) as lax:
        assert lax.fan_out(hosts, lambda conn: conn.run("true", **QUIET).exited).failed == {}


# -- on the session's real sshd hosts ----------------------------------------------


def test_releases_deploy_onto_real_hosts_with_the_asyncssh_backend(
    kit: DeployKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[str] = []
    real_run = AsyncConnection.run

    def counted(self: AsyncConnection, command: str, **kwargs: Any) -> Any:
        commands.append(command)  # a spy: the command still runs on the real host
        return real_run(self, command, **kwargs)

    monkeypatch.setattr(AsyncConnection, "run", counted)
    monkeypatch.setattr(FastConnection, "open", lambda self: pytest.fail("Paramiko connected"))
    kit.make_tree(1, kit.files_path, 256 * 1024)
    peers = (2, 3, 4, 5)
    murder = kit.murder(peers=peers, tag="as1", ssh_backend="asyncssh")
    events: list[Event] = []
    before = threading.active_count()
    peak: list[int] = []

    def on_event(event: Event) -> None:
        events.append(event)
        peak.append(threading.active_count())

    deployed = releases.deploy(kit.context(murder), on_event=on_event)
    hosts = [kit.fleet.host(i).host_string for i in peers]
    assert sorted(deployed.report.succeeded) == sorted(hosts)
    for index in peers:
        link = kit.sh(index, 'readlink -- "$1"', f"{kit.destination_path}/current")
        assert link.strip().endswith("as1"), (index, link)
    assert [e.message for e in events if e.kind == "warning"] == []
    assert any(" poll " in c or "--while-seq" in c for c in commands), commands
    # the run's own fan-outs (parallel 32) and the watch, never a thread per connection
    assert max(peak) <= before + settings(kit.context(murder)).parallel + 50


def test_put_and_get_round_trip_through_a_real_home_directory(
    kit: DeployKit, tmp_path: Path
) -> None:
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(300_000))
    local.chmod(0o640)
    config = kit.fleet.fabric_config()
    with ConnectionPool(
        config, known_hosts=(str(kit.fleet.known_hosts_path),), backend="asyncssh"
    ) as pool:
        conn = pool.get(kit.fleet.host(2).host_string)
        sent = conn.put(str(local), remote="as-blob.bin")
        assert sent.remote == "as-blob.bin"
        listed = conn.run('stat -c %a -- "$HOME/as-blob.bin"', **QUIET).stdout.strip()
        assert listed == "640"
        back = tmp_path / "back"
        back.mkdir()
        got = conn.get("as-blob.bin", local=str(back))
        assert Path(got.local) == back / "as-blob.bin"
        assert (back / "as-blob.bin").read_bytes() == local.read_bytes()
        conn.run('rm -f -- "$HOME/as-blob.bin"', **QUIET)


def test_an_unknown_or_changed_host_key_is_refused_by_real_sshd(
    kit: DeployKit, tmp_path: Path
) -> None:
    changed, unknown = kit.fleet.host(3), kit.fleet.host(4)
    known = kit.known_hosts_with(tmp_path, changed=3, unknown=4)
    hosts = [changed.host_string, unknown.host_string, kit.fleet.host(2).host_string]
    config = kit.fleet.fabric_config()
    with ConnectionPool(config, known_hosts=(str(known),), backend="asyncssh") as pool:
        results = pool.fan_out(hosts, lambda conn: conn.run("true", **QUIET).exited)
    assert results.succeeded == {hosts[2]: 0}
    assert "does not match" in results.failed[hosts[0]], results.failed
    assert "not found in known_hosts" in results.failed[hosts[1]], results.failed


def test_an_event_loop_closes_with_its_thread() -> None:
    before = threading.active_count()
    loop = EventLoop()
    assert threading.active_count() == before + 1
    loop.close()
    loop.close()  # twice is fine
    assert threading.active_count() == before


def test_a_5000_line_known_hosts_is_read_once_and_each_connection_trusts_its_own_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "known_hosts"
    found = write_known_hosts(path, 5000)
    parsed = count_parsed_lines(monkeypatch)
    with ConnectionPool(Context().config, known_hosts=(str(path),), backend="asyncssh") as pool:
        chosen = list(range(0, 5000, 25))
        conns = [pool.get(f"root@10.0.{i // 256 % 256}.{i % 256}") for i in chosen]
        off_22 = pool.get("root@10.0.0.7:2222")
    assert len(parsed) == 5000  # once for the pool, not once per connection
    for i, conn in zip(chosen, conns, strict=True):
        trusted = conn._trusted
        assert trusted is not None and len(trusted) == 1
        assert (
            trusted[0].public_data
            == asyncssh.import_public_key(f"ssh-ed25519 {found[i].get_base64()}").public_data
        )
    assert off_22._trusted == []  # filed under [host]:2222: unknown, so it will be refused
    with ConnectionPool(Context().config, strict_host_keys=False, backend="asyncssh") as lax:
        assert lax.get("web1")._trusted is None  # any key, as Fabric does
