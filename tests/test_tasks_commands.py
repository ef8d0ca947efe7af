"""Command construction and the task layer, without hosts (MockContext, fakes)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fabric import Config
from invoke import Context, MockContext, Result
from invoke.exceptions import Exit

import fabmurder
import fabmurder.tasks as tasks_mod
from fabmurder import pipeline
from fabmurder.config import settings
from fabmurder.contract import parse_reply as parse_json
from fabmurder.errors import DeployError, HostError
from fabmurder.remote import ConnectionPool, agent_command, run_agent
from fabmurder.report import DeployReport, HostReport

NASTY = '/srv/my build/it\'s "quoted" $(not run) `nor this`; & | *'


def test_a_path_with_spaces_and_quotes_reaches_the_agent_intact(tmp_path: Path) -> None:
    # A stand-in agent prints the argv it received; a real shell parses the command.
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    s = settings(Context(), remote_path=str(tmp_path))
    command = agent_command(s, "create", "--src", NASTY, "--tag", "v1")
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    # -I -B: no working-directory module can take over a host command (#12)
    assert json.loads(out.stdout) == [
        "-I", "-B", "-m", "fabmurder", "create", "--src", NASTY, "--tag", "v1",
    ]  # fmt: skip


def test_the_agent_command_quotes_every_argument_and_uses_the_agent_venv() -> None:
    s = settings(Context(), remote_path="/opt/my agent")
    command = agent_command(s, "clean", "--temp-path", "/tmp/a b")
    assert shlex.split(command) == [
        "/opt/my agent/venv/bin/python", "-I", "-B", "-m", "fabmurder",
        "clean", "--temp-path", "/tmp/a b",
    ]  # fmt: skip


def test_run_agent_parses_the_json_a_host_command_prints() -> None:
    s = settings(Context())
    command = agent_command(s, "daemon", "start", "--pid-file", "/tmp/x.pid")
    c = MockContext(run={command: Result(stdout='{"pid": 42, "pid_file": "/tmp/x.pid"}\n')})
    assert run_agent(c, s, "daemon", "start", "--pid-file", "/tmp/x.pid") == {
        "pid": 42,
        "pid_file": "/tmp/x.pid",
        "exit": 0,
    }


def test_run_agent_accepts_already_running_only_when_told() -> None:
    s = settings(Context())
    command = agent_command(s, "daemon", "start")
    running = Result(stderr="fabmurder: already running as pid 7\n", exited=3)
    c = MockContext(run={command: running}, repeat=True)
    assert run_agent(c, s, "daemon", "start", ok=(0, 3))["exit"] == 3
    with pytest.raises(HostError, match=r"already running as pid 7 \(exit 3\)"):
        run_agent(c, s, "daemon", "start")


def test_parse_json_takes_the_last_json_line_of_noisy_output() -> None:
    assert parse_json('warning: x\n{"a": 1}\n') == {"a": 1}
    assert parse_json("not json") is None


def test_fan_out_runs_exactly_parallel_operations_at_once() -> None:
    pool = ConnectionPool(Context().config, parallel=4)
    lock = threading.Lock()
    running, peak = 0, 0
    # Each call holds its slot until four are inside at once: a pool that ran
    # fewer at a time would break the barrier (its timeout is only a bound on a
    # hang), and one that ran more would show a peak above four.
    together = threading.Barrier(4, timeout=30)

    def work(conn: Any) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        together.wait()
        with lock:
            running -= 1
        if conn.original_host == "host7":
            raise OSError("Connection refused")
        return str(conn.original_host)

    threads_before = threading.active_count()
    result = pool.fan_out([f"host{i}" for i in range(40)], work)
    assert peak == 4
    assert not together.broken
    assert len(result) == 40
    assert set(result.failed) == {"host7"}
    assert threading.active_count() <= threads_before + 1
    assert result["host3"] == "host3"


def test_every_murder_task_is_in_the_collection_under_its_murder_name() -> None:
    assert set(fabmurder.ns.task_names) == {
        "distribute-files", "setup", "start-tracker", "stop-tracker", "create-torrent",
        "start-seeding", "stop-seeding", "peer-download", "stop-peering", "stop",
        "clean-temp-files", "status", "deploy", "publish", "rollback", "cleanup",
    }  # fmt: skip


def test_every_task_argument_has_help_and_a_one_line_summary() -> None:
    for name in fabmurder.ns.task_names:
        task = fabmurder.ns[name]
        helped = set(task.help)  # get_arguments() consumes task.help
        args = {a.name for a in task.get_arguments()}
        assert args <= helped, f"{name} lacks help for {args - helped}"
        assert task.__doc__ and task.__doc__.splitlines()[0].endswith(".")


class Resolved(Exception):
    """Raised by a stand-in ``open_pool`` to hand back the settings a run resolved."""


def test_flags_become_overrides_and_unset_flags_fall_back_to_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def resolve_only(c: Any, s: Any) -> Any:
        raise Resolved(s)

    # The real task and the real pipeline step, stopped where the run opens.
    monkeypatch.setattr(pipeline, "open_pool", resolve_only)
    config = Config()
    config.load_collection(fabmurder.ns.configuration())
    config.murder.update(
        tag="from-config", timeout=100, files_path="/srv/app", destination_path="/srv/releases",
        seed_after=7, max_failed_peers=2, parallel=5, force=True, seeder="seed",
    )  # fmt: skip
    c = Context(config=config)
    with pytest.raises(Resolved) as caught:
        tasks_mod.distribute_files(c, tag="v2", timeout="30")
    s = caught.value.args[0]
    assert (s.tag, s.timeout) == ("v2", 30.0)  # the flags given win
    # the flags not given: values that only the config holds
    assert (s.files_path, s.destination_path) == ("/srv/app", "/srv/releases")
    assert (s.seed_after, s.max_failed_peers, s.parallel) == (7.0, 2, 5)
    assert s.force is True  # a switch left off is "not given", not "false"
    config.murder.force = False
    with pytest.raises(Resolved) as caught:
        tasks_mod.distribute_files(c, force=True)
    assert caught.value.args[0].force is True
    assert caught.value.args[0].tag == "from-config"


def test_the_task_prints_the_report_the_pipeline_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake(c: Any, *, on_event: Any = None, **overrides: Any) -> DeployReport:
        return DeployReport(tag="v2", hosts={"web1": HostReport("web1", ok=True, seconds=1.0)})

    monkeypatch.setattr(pipeline, "distribute_files", fake)
    report = tasks_mod.distribute_files(Context(), tag="v2")
    assert report.succeeded == ["web1"]
    assert "web1" in capsys.readouterr().out


def test_too_many_failures_exit_non_zero_naming_each_host_and_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = DeployReport(
        tag="v3",
        hosts={
            "web1": HostReport("web1", ok=True, seconds=2.0, bytes=10),
            "web2": HostReport("web2", reason="cannot connect: Connection refused"),
        },
    )

    def fake(c: Any, **kwargs: Any) -> DeployReport:
        raise DeployError("1 of 2 peer(s) failed", report.failures, report)

    monkeypatch.setattr(pipeline, "distribute_files", fake)
    with pytest.raises(Exit) as caught:
        tasks_mod.distribute_files(Context())
    assert caught.value.code == 1
    assert "[web2] cannot connect: Connection refused" in str(caught.value.message)
    table = capsys.readouterr().out
    assert "web1" in table and "FAILED" in table


def test_fab_lists_the_tasks_of_a_fabfile_that_adds_the_collection(tmp_path: Path) -> None:
    (tmp_path / "fabfile.py").write_text(
        "from invoke import Collection\nimport fabmurder\n"
        "ns = Collection()\nns.add_collection(fabmurder.ns, name='murder')\n"
    )
    fab = Path(sys.executable).with_name("fab")
    out = subprocess.run(
        [str(fab), "--list"], cwd=tmp_path, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert "murder.distribute-files" in out.stdout
    assert "Ship a release from the seeder to every peer" in out.stdout
    assert "murder.stop-peering" in out.stdout


def test_connections_get_a_connect_timeout_unless_the_fabric_config_sets_one() -> None:
    from fabric import Config

    assert ConnectionPool(Context().config).get("web1").connect_timeout == 30
    configured = Config(overrides={"timeouts": {"connect": 5}})
    pool = ConnectionPool(configured)
    assert pool.get("web1").connect_timeout == 5
    assert pool.get("web1") is pool.get("web1")  # one connection per host per run


def test_strict_host_keys_load_the_known_hosts_and_reject_unknown_keys(tmp_path: Path) -> None:
    import paramiko

    known = tmp_path / "known_hosts"
    known.write_text(
        "web1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    strict = ConnectionPool(Context().config, strict_host_keys=True, known_hosts=(str(known),)).get(
        "web1"
    )
    assert isinstance(strict.client._policy, paramiko.RejectPolicy)
    assert "web1" in strict.client.get_host_keys()
    lax = ConnectionPool(Context().config, strict_host_keys=False).get("web1")
    assert isinstance(lax.client._policy, paramiko.AutoAddPolicy)


def test_strict_host_keys_are_on_unless_switched_off() -> None:
    assert settings(Context()).strict_host_keys is True
    assert settings(Context(), strict_host_keys="false").strict_host_keys is False
    assert settings(Context(), known_hosts="/k").known_hosts == ("/k",)
