"""Detaching host-side commands and stopping them only by PID files that are still ours."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabmurder.host import daemon
from fabmurder.testing.hostcli import run as fab


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    return daemon.proc_starttime(pid) is not None and not daemon._is_zombie(pid)


def wait_until(condition: object, timeout: float = 10.0) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not fabmurder's (a plain ``sleep``)."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def start_tracker(tmp_path: Path) -> tuple[dict[str, object], Path]:
    pid_file = tmp_path / "tracker.pid"
    result = fab(
        "daemon", "start", "--pid-file", str(pid_file), "--log", str(tmp_path / "tracker.log"),
        "--", "tracker", "--bind", "127.0.0.1", "--port", str(free_port()),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), pid_file


def test_start_detaches_waits_for_ready_and_stop_ends_exactly_that_process(tmp_path: Path) -> None:
    started, pid_file = start_tracker(tmp_path)
    pid = int(started["pid"])  # type: ignore[call-overload]
    try:
        record = json.loads(pid_file.read_text())
        assert record["pid"] == pid
        assert record["starttime"] == daemon.proc_starttime(pid)
        assert record["role"] == "tracker"
        assert any("fabmurder" in part for part in record["argv"])
        assert alive(pid)
        assert os.getsid(pid) != os.getsid(0)  # a new session: an SSH hang-up cannot reach it
        status = json.loads(fab("daemon", "status", "--pid-file", str(pid_file)).stdout)
        assert status["alive"] is True and status["pid"] == pid
        again = fab(
            "daemon", "start", "--pid-file", str(pid_file), "--log", str(tmp_path / "t.log"),
            "--", "tracker", "--bind", "127.0.0.1", "--port", str(free_port()),
        )  # fmt: skip
        assert again.returncode == 3
        assert f"already running as pid {pid}" in again.stderr
    finally:
        stopped = fab("daemon", "stop", "--pid-file", str(pid_file))
    assert json.loads(stopped.stdout) == {"stopped": True, "pid": pid, "reason": "terminated"}
    assert wait_until(lambda: not alive(pid))
    assert not pid_file.exists()
    again = json.loads(fab("daemon", "stop", "--pid-file", str(pid_file)).stdout)
    assert again == {"stopped": False, "pid": None, "reason": "no pid file"}


def test_a_command_that_dies_before_ready_fails_start_with_the_log_tail(tmp_path: Path) -> None:
    (tmp_path / "d.log").write_text("an older run's line\n")
    result = fab(
        "daemon", "start", "--pid-file", str(tmp_path / "d.pid"), "--log", str(tmp_path / "d.log"),
        "--", "create", "--src", str(tmp_path / "missing"), "--out-dir", str(tmp_path),
        "--tag", "v1", "--announce", "http://127.0.0.1:1/announce",
    )  # fmt: skip
    assert result.returncode == 1
    assert "exited before it was ready" in result.stderr
    assert "does not exist" in result.stderr
    assert "an older run's line" not in result.stderr
    assert not (tmp_path / "d.pid").exists()


def test_a_command_that_never_becomes_ready_is_ended_and_reported(tmp_path: Path) -> None:
    with socket.socket() as silent:
        # A listener that never answers keeps `stats` waiting well past the ready timeout.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/stats"
        result = fab(
            "daemon", "start", "--pid-file", str(tmp_path / "s.pid"),
            "--log", str(tmp_path / "s.log"), "--ready-timeout", "0.5",
            "--", "stats", "--url", url, "--timeout", "30",
        )  # fmt: skip
        # `stats` had connected, sent its request and was still waiting; once
        # it is ended, the kernel closes its end: the request, then end of file.
        silent.settimeout(10)
        conn, _ = silent.accept()
        with conn:
            received = b""
            while chunk := conn.recv(4096):
                received += chunk
        assert received.startswith(b"GET /stats")
    assert result.returncode == 1
    # Not "exited before it was ready": the ready timeout fired, not the 30 s one.
    assert "did not become ready in time" in result.stderr
    assert not (tmp_path / "s.pid").exists()


def test_stop_never_signals_a_foreign_process_named_by_the_pid_file(
    tmp_path: Path, foreign: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "seed-v1.pid"
    # A forged record with the right start time: only the command line gives it away.
    pid_file.write_text(
        json.dumps({"pid": foreign.pid, "starttime": daemon.proc_starttime(foreign.pid),
                    "role": "seed", "argv": ["sleep"]})
    )  # fmt: skip
    result = json.loads(fab("daemon", "stop", "--pid-file", str(pid_file)).stdout)
    assert result["stopped"] is False
    assert "not ours" in result["reason"]
    assert foreign.poll() is None
    assert not pid_file.exists()


def test_stop_never_signals_a_process_that_merely_mentions_fabmurder(tmp_path: Path) -> None:
    """An sshd configured under /run/fabmurder/ is not ours, whatever its PID file says."""
    mention = ["-c", "import time; time.sleep(60)", "-f", "/run/fabmurder/fleet/sshd_config"]
    other = subprocess.Popen([sys.executable, *mention])
    try:
        assert wait_until(lambda: "/run/fabmurder" in " ".join(daemon.proc_cmdline(other.pid)))
        argv = daemon.proc_cmdline(other.pid)
        pid_file = tmp_path / "tracker.pid"
        record = {"pid": other.pid, "starttime": daemon.proc_starttime(other.pid), "argv": argv}
        pid_file.write_text(json.dumps({**record, "role": "tracker"}))
        result = json.loads(fab("daemon", "stop", "--pid-file", str(pid_file)).stdout)
        assert result["stopped"] is False and "not ours" in result["reason"]
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_stop_never_signals_a_recycled_pid_of_a_fabmurder_process(tmp_path: Path) -> None:
    started, pid_file = start_tracker(tmp_path)
    pid = int(started["pid"])  # type: ignore[call-overload]
    record = json.loads(pid_file.read_text())
    try:
        stale = tmp_path / "old.pid"
        stale.write_text(json.dumps({**record, "starttime": record["starttime"] - 1}))
        result = json.loads(fab("daemon", "stop", "--pid-file", str(stale)).stdout)
        assert result["stopped"] is False
        assert alive(pid)
        assert not stale.exists()
    finally:
        fab("daemon", "stop", "--pid-file", str(pid_file))


@pytest.mark.parametrize("content", ["", "{", '{"pid": 1, "starttime": 1}', '{"pid": "12"}'])
def test_a_malformed_pid_file_is_removed_without_signalling_anything(
    tmp_path: Path, content: str
) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text(content)
    result = json.loads(fab("daemon", "stop", "--pid-file", str(pid_file)).stdout)
    assert result["stopped"] is False
    assert not pid_file.exists()


def test_a_daemon_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    started, pid_file = start_tracker(tmp_path)
    pid = int(started["pid"])  # type: ignore[call-overload]
    # Stand-in for a wedged daemon: stop it so SIGTERM cannot be handled.
    os.kill(pid, signal.SIGSTOP)
    result = json.loads(
        fab("daemon", "stop", "--pid-file", str(pid_file), "--timeout", "0.5").stdout
    )
    assert result == {"stopped": True, "pid": pid, "reason": "killed after timeout"}
    assert wait_until(lambda: not alive(pid))


def test_notify_ready_is_a_no_op_outside_a_daemon(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "x.pid"
    monkeypatch.delenv(daemon.READY_FD_ENV, raising=False)
    monkeypatch.setenv(daemon.PID_FILE_ENV, str(pid_file))
    daemon.notify_ready()
    assert not pid_file.exists()
    assert daemon.PID_FILE_ENV not in os.environ  # a child it starts inherits nothing
    # The same call under `daemon start` (a ready pipe given) does both things.
    read_fd, write_fd = os.pipe()
    monkeypatch.setenv(daemon.READY_FD_ENV, str(write_fd))
    monkeypatch.setenv(daemon.PID_FILE_ENV, str(pid_file))
    monkeypatch.setenv(daemon.ROLE_ENV, "tracker")
    daemon.notify_ready()
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == b"ready\n"  # EOF too: notify_ready closed its end
    record = json.loads(pid_file.read_text())
    assert record["pid"] == os.getpid() and record["role"] == "tracker"
    assert record["starttime"] == daemon.proc_starttime(os.getpid())


def start_with_files(tmp_path: Path, stdin: bytes, *files: str) -> subprocess.CompletedProcess[str]:
    """``daemon start --stdin-file ...`` of a tracker, with ``stdin`` on its stdin."""
    args = [part for spec in files for part in ("--stdin-file", spec)]
    return subprocess.run(
        [
            sys.executable, "-m", "fabmurder", "daemon", "start",
            "--pid-file", str(tmp_path / "t.pid"), "--log", str(tmp_path / "t.log"), *args,
            "--", "tracker", "--bind", "127.0.0.1", "--port", str(free_port()),
        ],
        input=stdin.decode(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_start_lands_the_files_its_command_reads_from_one_stdin_privately(tmp_path: Path) -> None:
    import base64

    torrent, allow = bytes(range(256)) * 3, b"10.0.0.0/24\n10.0.1.7/32\n"
    encoded = base64.b64encode(torrent)
    private = tmp_path / "private"
    result = start_with_files(
        tmp_path,
        encoded + allow,
        f"base64:{len(encoded)}:{private}/v1.torrent",
        f"text:{len(allow)}:{private}/peer-v1.allow",
    )
    assert result.returncode == 0, result.stderr
    pid = int(json.loads(result.stdout)["pid"])
    try:
        assert (private / "v1.torrent").read_bytes() == torrent
        assert (private / "peer-v1.allow").read_bytes() == allow
        assert {p.stat().st_mode & 0o777 for p in private.iterdir()} == {0o600}
        assert private.stat().st_mode & 0o777 == 0o700
    finally:
        fab("daemon", "stop", "--pid-file", str(tmp_path / "t.pid"))
    assert wait_until(lambda: not alive(pid))


def test_start_with_a_short_stdin_or_a_bad_spec_starts_nothing(tmp_path: Path) -> None:
    short = start_with_files(tmp_path, b"abc", f"text:10:{tmp_path}/x")
    assert short.returncode == 1
    assert "stdin ended 7 bytes short of 10" in short.stderr
    assert not (tmp_path / "t.pid").exists() and not (tmp_path / "x").exists()
    bad = start_with_files(tmp_path, b"abc", f"gzip:3:{tmp_path}/x")
    assert bad.returncode == 2
    assert "is not ENCODING:BYTES:PATH" in bad.stderr
    assert not (tmp_path / "t.pid").exists()


def test_a_stdin_file_under_the_users_home_lands_there(tmp_path: Path) -> None:
    # the default temp_path is ~/.cache/fabmurder/tmp: no shell expands a "~" inside a spec
    result = subprocess.run(
        [sys.executable, "-m", "fabmurder", "put", "--stdin-file", "text:3:~/.cache/t/x"],
        input="abc", capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".cache/t/x").read_text() == "abc"
    assert not (Path.cwd() / "~").exists()
