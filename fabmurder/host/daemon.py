"""``daemon``: detach a host-side command, and stop it again by a PID file that proves it is ours.

``start`` double-forks the command into its own session (stdin from
``/dev/null``, stdout and stderr appended to a log) so that the SSH call
that started it returns at once, and waits until the command says it is
ready through a pipe whose descriptor is passed in ``FABMURDER_READY_FD``.
The command itself writes the PID file when it becomes ready
(:func:`notify_ready`), with the process's start time from
``/proc/<pid>/stat``: ``stop`` signals a PID only if its start time and
command line still match, so a recycled or forged PID is never killed.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time

from fabmurder.errors import MurderError
from fabmurder.host import privatedir, put
from fabmurder.host.atomic import replace_file
from fabmurder.host.cli import EXIT_FAILED, EXIT_OK, EXIT_RUNNING, EXIT_USAGE, emit, fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

READY_FD_ENV = "FABMURDER_READY_FD"
PID_FILE_ENV = "FABMURDER_PID_FILE"
ROLE_ENV = "FABMURDER_ROLE"
#: bytes of the log shown when a daemon dies before it is ready
LOG_TAIL_BYTES = 4000


def proc_starttime(pid: int) -> int | None:
    """Return field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_cmdline(pid: int) -> list[str]:
    """Return the command line of ``pid`` (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode("utf-8", "replace") for part in fh.read().split(b"\0") if part]
    except OSError:
        return []


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2 :].split()[:1] == [b"Z"]


#: the key :func:`read_pid_file` adds to a record: the file it was read from
#: (set by the reader, never taken from the file's content)
READ_FROM = "read_from"


def read_pid_file(path: str) -> dict[str, Any] | None:
    """Return the PID file's record, or None if it is missing or malformed.

    The record gets :data:`READ_FROM`, so that :func:`is_ours` can check
    that the process was started for this very PID file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("pid"), int)
        or isinstance(record.get("pid"), bool)
        or record["pid"] <= 1
        or not isinstance(record.get("starttime"), int)
    ):
        return None
    record[READ_FROM] = os.path.abspath(path)
    return record


def is_agent_cmdline(argv: list[str]) -> bool:
    """Return True if ``argv`` runs fabmurder's host side (``python -m fabmurder ...``).

    A mere mention of "fabmurder" is not enough: an sshd whose config sits
    under ``/run/fabmurder/`` or an editor on a fabmurder file is not ours.
    """
    return any(a == "-m" and b == "fabmurder" for a, b in zip(argv, argv[1:], strict=False))


def _started_for(pid: int, argv: list[str], pid_file: str) -> bool:
    """Tell whether ``argv`` (of ``pid``) is a ``daemon start`` for ``pid_file``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--pid-file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--pid-file="):
            value = arg.split("=", 1)[1]
        if value is not None:
            break
    if value is None:
        return False
    if not os.path.isabs(value):
        try:
            value = os.path.join(os.readlink(f"/proc/{pid}/cwd"), value)
        except OSError:
            return False
    return os.path.realpath(value) == os.path.realpath(pid_file)


def is_ours(record: dict[str, Any] | None) -> bool:
    """Return True if the process named by a PID-file record is alive and is that very process.

    The start time must match field 22 of ``/proc/<pid>/stat``, the command
    line must be a fabmurder agent's (``-m fabmurder``) and, when the record
    holds one, equal to the recorded ``argv``: a recycled PID never passes.
    Start time and command line are public (``/proc`` is world-readable), so
    they alone do not stop a forged record. The process must also run as
    this user, and one read from a PID file must have been started for that
    file (``daemon start --pid-file <it>``): a ``peer-<tag>.pid`` that names
    the tracker does not make a stop of the peers kill the tracker.
    """
    if not record:
        return False
    pid = record["pid"]
    if proc_starttime(pid) != record["starttime"] or _is_zombie(pid):
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return False
    except OSError:
        return False
    argv = proc_cmdline(pid)
    recorded = record.get("argv")
    if isinstance(recorded, list) and recorded and recorded != argv:
        return False
    pid_file = record.get(READ_FROM)
    if isinstance(pid_file, str) and not _started_for(pid, argv, pid_file):
        return False
    return is_agent_cmdline(argv)


def notify_ready() -> None:
    """Tell ``daemon start`` this process is ready: write the PID file, then signal the pipe.

    A no-op when the process was not started by ``daemon start``.
    """
    fd_text = os.environ.pop(READY_FD_ENV, None)
    pid_file = os.environ.pop(PID_FILE_ENV, None)
    if fd_text is None:
        return
    pid = os.getpid()
    if pid_file:
        record = {
            "pid": pid,
            "starttime": proc_starttime(pid),
            "role": os.environ.get(ROLE_ENV, ""),
            "argv": proc_cmdline(pid),
        }
        replace_file(pid_file, json.dumps(record).encode("utf-8"))
    try:
        fd = int(fd_text)
        os.write(fd, b"ready\n")
        os.close(fd)
    except (OSError, ValueError):
        pass


def _log_tail(path: str, since: int = 0) -> str:
    """Return the end of the log, from no earlier than offset ``since`` (this run's start)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(since, fh.tell() - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _child(command: list[str], pid_file: str, log: str, write_fd: int) -> None:
    """Become the daemon: new session, second fork, redirect, run the command in-process."""
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    # O_NOFOLLOW: a symlink planted at the log's name must not make the deploy
    # user append to a file someone else chose (``start`` refuses it first).
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    # The working directory is kept: commands may name paths relative to it.
    os.write(write_fd, f"pid {os.getpid()}\n".encode())
    os.environ[READY_FD_ENV] = str(write_fd)
    os.environ[PID_FILE_ENV] = os.path.abspath(pid_file)
    os.environ[ROLE_ENV] = command[0]
    # Let a role tell `ps` who it is, for humans reading process lists.
    sys.argv = ["fabmurder", *command]
    code = 1
    try:
        from fabmurder.__main__ import main as run_command

        code = run_command(command)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start(command: list[str], pid_file: str, log: str, ready_timeout: float) -> int:
    """Start ``command`` detached and wait until it is ready; return the exit code."""
    if not command:
        fail("daemon start needs a command after '--'")
        return EXIT_USAGE
    existing = read_pid_file(pid_file)
    if is_ours(existing):
        assert existing is not None
        fail(f"already running as pid {existing['pid']} (pid file {pid_file})")
        return EXIT_RUNNING
    if os.path.lexists(pid_file):
        os.unlink(pid_file)
    if os.path.islink(log):
        fail(f"refusing to write the log {log}: it is a symlink")
        return EXIT_FAILED
    for directory in {os.path.dirname(os.path.abspath(p)) for p in (pid_file, log)}:
        privatedir.ensure(directory)
    log_start = os.path.getsize(log) if os.path.exists(log) else 0
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:
        os.close(read_fd)
        _child(command, pid_file, log, write_fd)
    os.close(write_fd)
    os.waitpid(first, 0)
    ready, child = _wait_ready(read_fd, ready_timeout)
    os.close(read_fd)
    record = read_pid_file(pid_file)
    if ready and record is not None:
        emit({"pid": record["pid"], "pid_file": os.path.abspath(pid_file)})
        return EXIT_OK
    if ready is None and child is not None:
        # Freshly forked by us and not ready: no PID file names it, so end it here.
        _end(child, ready_timeout)
    why = "did not become ready in time" if ready is None else "exited before it was ready"
    fail(f"{command[0]} {why} (log {log}):\n{_log_tail(log, log_start).rstrip()}")
    return EXIT_FAILED


def _wait_ready(read_fd: int, timeout: float) -> tuple[bool | None, int | None]:
    """Wait for the child's ``ready`` line.

    Return ``(True, pid)`` once it is ready, ``(False, pid)`` if it closed the
    pipe first (it died), ``(None, pid)`` on timeout; ``pid`` is the daemon's
    PID as it reported it first thing, or None if it never did.
    """
    deadline = time.monotonic() + timeout
    buffer = b""
    pid = None
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([read_fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(read_fd, 256)
        if not chunk:
            return False, pid
        buffer += chunk
        for line in buffer.split(b"\n")[:-1]:
            if line.startswith(b"pid "):
                pid = int(line[4:])
            elif line == b"ready":
                return True, pid
    return None, pid


def _end(pid: int, grace: float) -> None:
    """Terminate a daemon that never became ready (SIGTERM, then SIGKILL)."""
    record = {"pid": pid, "starttime": proc_starttime(pid)}
    if record["starttime"] is None or not is_ours(record):
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(record, min(grace, 5.0)) and is_ours(record):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(record, 5.0)


def stop(pid_file: str, timeout: float) -> dict[str, Any]:
    """Stop the daemon named by ``pid_file`` if it is still ours; return what happened."""
    record = read_pid_file(pid_file)
    if record is None:
        reason = "no pid file" if not os.path.lexists(pid_file) else "malformed pid file removed"
        if os.path.lexists(pid_file):
            os.unlink(pid_file)
        return {"stopped": False, "pid": None, "reason": reason}
    pid = record["pid"]
    if not is_ours(record):
        os.unlink(pid_file)
        return {
            "stopped": False,
            "pid": pid,
            "reason": "stale pid file removed (process gone or not ours)",
        }
    reason = "terminated"
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(record, timeout):
        reason = "killed after timeout"
        if is_ours(record):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(record, 5.0)
    if os.path.lexists(pid_file) and read_pid_file(pid_file) == record:
        os.unlink(pid_file)
    return {"stopped": True, "pid": pid, "reason": reason}


def _wait_gone(record: dict[str, Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    _wait_exit(record, timeout)
    delay = 0.01
    while time.monotonic() < deadline:
        if not is_ours(record):
            return True
        # Not our child: without a pidfd there is nothing to wait on but /proc; back off.
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return not is_ours(record)


def _wait_exit(record: dict[str, Any], timeout: float) -> None:
    """Block until the process of ``record`` exits or ``timeout`` passes (Linux pidfd).

    Returns at once where pidfds are missing; the caller's /proc polling
    then does the waiting. The pidfd is opened first and the process
    checked after, so it names the very process the record does.
    """
    try:
        fd = os.pidfd_open(record["pid"])
    except (AttributeError, OSError):
        return
    try:
        if is_ours(record):
            select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def status(pid_file: str) -> dict[str, Any]:
    """Describe the daemon named by ``pid_file``."""
    record = read_pid_file(pid_file)
    return {
        "pid_file": os.path.abspath(pid_file),
        "pid": record["pid"] if record else None,
        "role": record.get("role") if record else None,
        "alive": is_ours(record),
    }


def parser() -> argparse.ArgumentParser:
    """Return the ``daemon`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder daemon", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("start", help="start a command detached")
    s.add_argument("--pid-file", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--ready-timeout", type=float, default=60.0)
    s.add_argument(
        "--stdin-file",
        action="append",
        default=[],
        type=put.stdin_file,
        help="ENCODING:BYTES:PATH: land a file from stdin first, as put does; repeatable",
    )
    s.add_argument("command", nargs=argparse.REMAINDER)
    t = sub.add_parser("stop", help="stop a daemon by its pid file")
    t.add_argument("--pid-file", required=True)
    t.add_argument("--timeout", type=float, default=10.0)
    u = sub.add_parser("status", help="describe a daemon by its pid file")
    u.add_argument("--pid-file", required=True)
    return p


def main(argv: list[str]) -> int:
    """Run ``daemon start|stop|status``."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.action == "start":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        try:
            put.land(args.stdin_file)  # the files the command reads (one Python start, not three)
        except MurderError as exc:
            fail(str(exc))
            return EXIT_FAILED
        return start(command, args.pid_file, args.log, args.ready_timeout)
    if args.action == "stop":
        emit(stop(args.pid_file, args.timeout))
        return EXIT_OK
    emit(status(args.pid_file))
    return EXIT_OK
