"""The init process of one fleet host: hold its namespaces, run its sshd, reap orphans.

The fleet starts this program by path with ``python -I -S`` (stdlib only,
no package import, so it starts fast) inside the host's network namespace
and a fresh mount and UTS namespace. It then:

- mounts a private tmpfs on each ``--tmpfs PATH:MODE`` and sets the hostname;
- puts Debian's default ``.bashrc`` over each ``--default-bashrc PATH`` (a
  bind mount), so the login shell that sshd starts for every command does
  not run this machine's start-up file: a developer's ``.bashrc`` that runs
  ``pyenv init`` cost 125 ms of CPU per SSH command, per host, which a
  fresh server does not have;
- becomes a child subreaper, so daemons that hosts detach over SSH are
  reaped here instead of turning into zombies under the machine's init;
- runs ``sshd -D`` as its child and writes a JSON state file (atomically)
  once sshd answers on loopback: ``{"pid", "sshd_pid", "generation",
  "error"}``;
- SIGUSR1 stops sshd, SIGUSR2 starts it again (``generation`` grows by one
  each start), SIGTERM stops every child, reaps them and exits.

As long as this process lives, the host's private ``/srv`` and ``/tmp``
live too, even while its sshd is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}


class HostInit:
    """Run one host's sshd and keep the state file in step with it."""

    def __init__(self, state_file: str, port: int, sshd_argv: list[str], log: str) -> None:
        self.state_file = state_file
        self.port = port
        self.sshd_argv = sshd_argv
        self.log = log
        self.sshd_pid: int | None = None
        self.generation = 0

    def write_state(self, error: str | None = None) -> None:
        state = {
            "pid": os.getpid(),
            "sshd_pid": self.sshd_pid,
            "generation": self.generation,
            "error": error,
        }
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_file)

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.sshd_pid:
                self.sshd_pid = None
                self.write_state()

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def start_sshd(self) -> None:
        if self.sshd_pid is not None:
            return
        self.generation += 1
        # posix_spawn, not Popen: the child must not inherit our blocked signal mask,
        # and this process reaps every child itself with waitpid(-1).
        self.sshd_pid = os.posix_spawn(
            self.sshd_argv[0],
            self.sshd_argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsigmask=[],
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            self.reap()
            if self.sshd_pid is None:
                self.write_state(error=f"sshd exited at start; see {self.log}")
                return
            if time.monotonic() > deadline:
                self.write_state(error="sshd did not answer within 10 s")
                return
            time.sleep(0.01)
        self.write_state()

    def stop_sshd(self) -> None:
        if self.sshd_pid is not None:
            os.kill(self.sshd_pid, signal.SIGTERM)

    def children(self) -> list[int]:
        pids: list[int] = []
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        return pids

    def shutdown(self) -> None:
        """Stop every child (sshd and orphans we adopted) and reap them all before exiting."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                self.reap()
                if not self.children():
                    return
                signal.sigtimedwait({signal.SIGCHLD}, 0.1)

    def serve(self) -> None:
        self.start_sshd()
        while True:
            info = signal.sigwaitinfo(SIGNALS)
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self.shutdown()
                return
            if info.si_signo == signal.SIGUSR1:
                self.stop_sshd()
            elif info.si_signo == signal.SIGUSR2:
                self.start_sshd()
            self.reap()


#: the .bashrc a fresh Debian root gets, else the one new users get
DEFAULT_BASHRC = ("/usr/share/base-files/dot.bashrc", "/etc/skel/.bashrc")


def hide_bashrc(path: str) -> None:
    """Bind Debian's default .bashrc, read-only, over ``path`` (when both exist)."""
    default = next((p for p in DEFAULT_BASHRC if os.path.isfile(p)), None)
    if default and os.path.isfile(path):
        subprocess.run(["mount", "--bind", default, path], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)


def prepare(
    hostname: str,
    tmpfs: list[str],
    bashrc: list[str] | None = None,
    shared: list[str] | None = None,
) -> None:
    """Name this process, become a subreaper, mount the private and shared dirs, set the hostname.

    :param shared: ``SOURCE:PATH`` pairs: this machine's directory SOURCE
        appears read-only at PATH (inside a private dir, made first), the
        same bytes on every host, as one agent venv for a fleet of hundreds.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, b"fm-hostinit", 0, 0, 0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    for spec in tmpfs:
        path, _, mode = spec.partition(":")
        os.makedirs(path, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"mode={mode or '0755'}", "fabmurder", path],
            check=True,
        )
    for spec in shared or []:
        source, _, path = spec.partition(":")
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "--bind", source, path], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
    for path in bashrc or []:
        hide_bashrc(path)
    socket.sethostname(hostname)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostinit")
    parser.add_argument("--state", required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--tmpfs", action="append", default=[])
    parser.add_argument("--default-bashrc", action="append", default=[])
    parser.add_argument("--shared", action="append", default=[], help="SOURCE:PATH, read-only")
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--log", required=True)
    parser.add_argument("sshd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    sshd_argv = args.sshd[1:] if args.sshd[:1] == ["--"] else args.sshd
    # Block the signals we handle before any child exists, so none is lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    init = HostInit(args.state, args.port, sshd_argv, args.log)
    try:
        prepare(args.hostname, args.tmpfs, args.default_bashrc, args.shared)
    except (OSError, subprocess.CalledProcessError) as exc:
        init.write_state(error=f"host preparation failed: {exc}")
        return 1
    init.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
