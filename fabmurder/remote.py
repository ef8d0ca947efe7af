"""Connections to the role hosts, fan-out over them, and the remote commands' helpers.

One :class:`ConnectionPool` lives for one run: each host is connected once and the
connection is reused by every step. :meth:`ConnectionPool.fan_out` runs a function
per host on at most ``parallel`` threads and returns a :class:`HostResults`
keyed by host string, with the successes and the failures (host -> reason)
ready to use. Its connections are Fabric's (:class:`FastConnection`, one
Paramiko thread each), or with ``murder.ssh_backend: asyncssh`` those of
:mod:`fabmurder.async_ssh`, which share one event loop thread; both offer
the same ``run`` / ``put`` / ``get``.

Host-side programs are started with :func:`agent_command`, which quotes
every argument; every remote action goes through ``Connection.run`` or
``Connection.put`` so ``--echo``, ``hide`` and ``warn`` behave as Fabric
users expect.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar, cast

import paramiko
from fabric import Connection

from fabmurder.config import Settings
from fabmurder.contract import parse_reply
from fabmurder.errors import HostError
from fabmurder.host.cli import raise_fd_limit
from fabmurder.known_hosts import KnownHosts, key_name
from fabmurder.redact import redact

T = TypeVar("T")

#: seconds to wait for an SSH connection when the Fabric config sets no timeout
CONNECT_TIMEOUT = 30
#: seconds a single status or probe command may take before the host is failed
POLL_TIMEOUT = 60.0

#: run() keywords for machine-to-machine commands: no echo of output, no
#: stdin forwarding (many threads must not compete for the terminal), and
#: non-zero exits come back as results to be judged by the caller.
QUIET: dict[str, Any] = {"hide": True, "warn": True, "in_stream": False}


def feeding(text: str) -> dict[str, Any]:
    """Return :data:`QUIET`'s run() keywords with ``text`` as the command's stdin (not echoed)."""
    return {**QUIET, "in_stream": Feed(text), "echo_stdin": False}


#: how the agent's interpreter runs a host command: ``-I`` (isolated) keeps the
#: working directory (the SSH login directory) and ``PYTHON*`` variables off
#: ``sys.path``, so a ``json.py`` left there cannot take over the command;
#: ``-B`` writes no bytecode, so the venv stays as setup recorded it
AGENT_FLAGS = ("-I", "-B")


def agent_command(s: Settings, command: str, *args: object) -> str:
    """Return the shell command that runs ``python -I -B -m fabmurder <command> <args>``."""
    argv = [s.agent_python, *AGENT_FLAGS, "-m", "fabmurder", command, *args]
    return " ".join(quote(part) for part in argv)


def quote(word: object) -> str:
    """Quote one word for the remote shell; a leading ``~/`` stays the user's home there.

    A path such as the default ``temp_path`` (``~/.cache/fabmurder/tmp``) is
    the deploy user's own on each host: the remote shell expands the ``~``,
    and everything after it is quoted as usual.
    """
    text = str(word)
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:]) if len(text) > 2 else "~/"
    return shlex.quote(text)


def sftp_path(path: str) -> str:
    """Return ``path`` as SFTP names it: ``~/x`` is ``x``, relative to the login directory."""
    return path[2:] if path.startswith("~/") else path


class Feed(io.StringIO):
    """Text for a remote command's stdin, handed over in one piece.

    Invoke reads ``in_stream`` one byte per ``read`` call (10 ms apart) when
    it cannot tell how much is waiting; this stream answers any ``read`` with
    all that is left, so a few kilobytes cost one pass, then end of file.
    """

    def read(self, size: int | None = -1) -> str:
        return super().read()


def shell(conn: Connection, command: str, what: str, timeout: float | None = None) -> Any:
    """Run a shell command on ``conn``; raise HostError naming ``what`` if it fails."""
    result = conn.run(command, timeout=timeout, **QUIET)
    if result.exited != 0:
        raise HostError(host_name(conn), f"{what}: {failure_reason(result)}", result)
    return result


def failure_reason(result: Any) -> str:
    """Return one line explaining why a command result or exception failed (tokens hidden)."""
    return redact(_reason(result))


def _reason(result: Any) -> str:
    if isinstance(result, BaseException):
        text = str(result).strip() or type(result).__name__
        if isinstance(result, HostError):
            text = result.reason
        elif isinstance(result, OSError | EOFError) or "ssh" in type(result).__module__.lower():
            text = f"cannot connect: {text}"
        return text.splitlines()[-1] if text else type(result).__name__
    stderr = (getattr(result, "stderr", "") or "").strip()
    last = stderr.splitlines()[-1] if stderr else ""
    code = getattr(result, "exited", "?")
    return f"{last} (exit {code})" if last else f"exit {code}"


def host_name(conn: Any) -> str:
    """Return a connection's host name for messages (a MockContext has none)."""
    return str(getattr(conn, "original_host", None) or "local")


def run_agent(
    conn: Connection,
    s: Settings,
    command: str,
    *args: object,
    ok: tuple[int, ...] = (0,),
    before: str = "",
    stdin: str | None = None,
) -> dict[str, Any]:
    """Run a host-side command on ``conn`` and return the JSON it printed.

    :param ok: exit codes that count as success (``daemon start`` adds 3).
    :param before: a shell command run first, in the same round trip; the
        host-side command runs only if it succeeds.
    :param stdin: text for the remote command's stdin (a secret or a file's
        content travels there, never on a command line ``ps`` shows).
    :raises HostError: when the command exits with another code, with the
        last line of its stderr as the reason.
    """
    line = agent_command(s, command, *args)
    command_line = f"{before} && {line}" if before else line
    if stdin is None:
        result = conn.run(command_line, **QUIET)
    else:
        result = conn.run(command_line, **feeding(stdin))
    if result.exited not in ok:
        raise HostError(host_name(conn), f"{command}: {failure_reason(result)}", result)
    data = parse_reply(result.stdout) or {}
    data.setdefault("exit", result.exited)
    return data


class FastConnection(Connection):
    """A Fabric Connection whose TCP socket sends small packets at once (``TCP_NODELAY``).

    Paramiko leaves Nagle's algorithm on. Every SSH request of ours is a
    few small packets that wait for an answer, so each one then waited for
    the server's delayed ACK: opening a channel took 44 ms instead of under
    1 ms on the lab fleet, and an SFTP upload several times that.
    """

    def open(self) -> Any:
        was_connected = self.is_connected
        result = super().open()
        transport = self.client.get_transport()
        sock = getattr(transport, "sock", None)
        # Through a gateway the "socket" is a channel or a ProxyCommand: leave it.
        if not was_connected and isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return result


class HostResults(dict[str, "T | BaseException"], Generic[T]):
    """Per host string: what a step returned there, or the exception that stopped it."""

    @property
    def succeeded(self) -> dict[str, T]:
        """Return host -> result for the hosts where the step succeeded."""
        return {h: v for h, v in self.items() if not isinstance(v, BaseException)}

    @property
    def failed(self) -> dict[str, str]:
        """Return host -> one-line reason for the hosts where the step failed."""
        return {h: failure_reason(v) for h, v in self.items() if isinstance(v, BaseException)}

    @property
    def errors(self) -> dict[str, BaseException]:
        """Return host -> the exception, for the hosts where the step failed."""
        return {h: v for h, v in self.items() if isinstance(v, BaseException)}


#: file descriptors a run needs beyond two per host (logs, pipes, the wheel files)
FD_SPARE = 256


def open_pool(c: Any, s: Settings) -> ConnectionPool:
    """Return the pool of connections one run of ``s`` uses (enter it with ``with``).

    The pool keeps a socket open per host: the soft ``RLIMIT_NOFILE`` (1,024
    unless raised) is raised first to what the run's hosts need.
    """
    raise_fd_limit(2 * len(s.role_hosts) + FD_SPARE)
    return ConnectionPool(c.config, s.parallel, s.strict_host_keys, s.known_hosts, s.ssh_backend)


class ConnectionPool:
    """Connections to the hosts of one run, made once and reused.

    ``strict_host_keys`` defaults to True, as ``murder.strict_host_keys`` does;
    ``backend`` is ``murder.ssh_backend`` (:data:`fabmurder.config.SSH_BACKENDS`).
    """

    def __init__(
        self,
        config: Any,
        parallel: int = 32,
        strict_host_keys: bool = True,
        known_hosts: tuple[str, ...] = (),
        backend: str = "fabric",
    ) -> None:
        self.config = config
        self.parallel = max(1, int(parallel))
        self.strict_host_keys = strict_host_keys
        self.known_hosts = known_hosts
        self.backend = backend
        self._connections: dict[str, Connection] = {}
        self._names: dict[int, str] = {}
        self._known: dict[tuple[str, ...], KnownHosts] = {}
        self._lock = threading.Lock()
        self._loop: Any = None  # the asyncssh backend's event loop, made with its first connection

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, host: str) -> Connection:
        """Return the one connection of this pool to ``host`` (opened lazily)."""
        with self._lock:
            conn = self._connections.get(host)
            if conn is None:
                # Without a connect timeout a host whose network is gone holds
                # its slot for minutes of TCP retries; the user's value wins.
                timeouts = self.config.get("timeouts") or {}
                timeout = timeouts.get("connect") or CONNECT_TIMEOUT
                conn = FastConnection(host, config=self.config, connect_timeout=timeout)
                if self.backend == "asyncssh":
                    conn = self._async(conn)
                elif self.strict_host_keys:
                    self._check_host_keys(conn)
                self._connections[host] = conn
                self._names[id(conn)] = host
            return conn

    def _async(self, resolved: Connection) -> Connection:
        """Return the asyncssh backend's connection to the host Fabric resolved (never opened)."""
        # asyncssh is an optional dependency: fabmurder[asyncssh]
        from fabmurder import async_ssh, ssh_loop

        if self._loop is None:
            self._loop = ssh_loop.EventLoop()
        known = self._known_for(resolved) if self.strict_host_keys else None
        conn = async_ssh.AsyncConnection(resolved, self._loop, known)
        # it offers the part of Connection that fabmurder uses (run, put, get, host ...)
        return cast(Connection, conn)

    def _known_for(self, conn: Connection) -> KnownHosts:
        """Return the known hosts ``conn``'s host is checked against, read once per pool."""
        paths = list(self.known_hosts)
        if not paths:
            configured = str(conn.ssh_config.get("userknownhostsfile") or "")
            paths = configured.split() or ["~/.ssh/known_hosts"]
            paths.append("/etc/ssh/ssh_known_hosts")
        # read once per pool (per set of files), not once per connection
        known = self._known.get(tuple(paths))
        if known is None:
            known = self._known[tuple(paths)] = KnownHosts.load(paths)
        return known

    def _check_host_keys(self, conn: Connection) -> None:
        """Make ``conn`` refuse a host whose key is unknown or has changed.

        Fabric accepts any key by default (auto-add); here the known hosts
        are loaded and unknown keys rejected before the first command runs.
        """
        known = self._known_for(conn)
        name = key_name(conn.host, conn.port)
        host_keys = conn.client.get_host_keys()
        for keytype, key in known.find(name).items():
            host_keys.add(name, keytype, key)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def host_of(self, conn: Connection) -> str:
        """Return the host string ``conn`` was made from (with its user and port)."""
        return self._names.get(id(conn), conn.original_host)

    def fan_out(self, hosts: Iterable[str], fn: Callable[[Connection], T]) -> HostResults[T]:
        """Call ``fn(connection)`` for each host, at most ``parallel`` at once.

        Exceptions do not escape: they are stored as that host's result, so
        one unreachable host never stops the others.
        """
        names = list(dict.fromkeys(hosts))
        result: HostResults[T] = HostResults()
        if not names:
            return result
        conns = [self.get(host) for host in names]

        def call(conn: Connection) -> T | BaseException:
            try:
                return fn(conn)
            except Exception as exc:  # per-host failure, reported in the result
                return exc

        workers = min(self.parallel, len(conns))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="murder") as pool:
            for host, value in zip(names, pool.map(call, conns), strict=True):
                result[host] = value
        return result

    def close(self) -> None:
        """Close every connection the pool opened."""
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
            self._names = {}
        for conn in connections:
            # closing a dead transport may fail; there is nothing to save then
            with contextlib.suppress(Exception):
                conn.close()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
