"""An SSH backend without a thread per connection: asyncssh on one event loop thread.

``murder.ssh_backend: asyncssh`` chooses it.

Paramiko gives every open connection a transport thread that wakes ten
times a second, and Invoke adds runner threads to every command: a pool of
1,000 hosts then holds 1,000 threads and spends CPU on them while nothing
happens. Here one asyncio event loop, in one background thread, carries
every connection of a pool. The pool's workers (at most ``parallel``) hand
it coroutines and wait for their results, so the code above still calls
``conn.run(...)``, ``conn.put(...)`` and ``conn.get(...)`` as it would on a
Fabric ``Connection``.

What a host's connection uses is what Fabric resolved for it: a Fabric
``Connection`` is built (never opened) to read its ``host``, ``port``,
``user``, connect timeout, ``connect_kwargs`` and ``IdentityFile``. Host keys
are checked against the pool's :class:`~fabmurder.known_hosts.KnownHosts`.

Not supported, and refused with a :class:`~fabmurder.errors.ConfigError`
rather than ignored: gateways (``gateway``, ``ProxyJump``,
``ProxyCommand``), agent forwarding, ``connect_kwargs`` other than
:data:`CONNECT_KWARGS`, ``sudo`` (and so its password prompt), ``pty=True``
and Invoke's watchers and ``env``. A command's output, when not hidden, is
printed once it ends rather than streamed; its stdin is the ``in_stream``
text, then end of file (none at all without one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import sys
from typing import Any

import asyncssh
from fabric import Connection
from fabric.runners import Result
from fabric.transfer import Result as Transfer
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from fabmurder.errors import ConfigError, HostError
from fabmurder.known_hosts import KnownHosts, key_name
from fabmurder.ssh_loop import EventLoop

#: the ``connect_kwargs`` this backend maps onto asyncssh; any other is refused
CONNECT_KWARGS = frozenset(
    {"key_filename", "look_for_keys", "allow_agent", "password", "passphrase", "timeout"}
)
#: the run() keywords a fabmurder command may pass; others (pty, watchers, env ...) are refused
RUN_KWARGS = frozenset({"hide", "warn", "in_stream", "echo_stdin", "timeout", "echo", "pty"})
#: ciphers in order of preference: asyncssh's chacha20-poly1305 builds two cipher contexts per
#: packet in Python, and a third of a 1,000-host deploy's control CPU went there; AES-GCM
#: (OpenSSH's next choice) keeps one per key
CIPHERS = (
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes128-ctr", "aes192-ctr", "aes256-ctr",
)  # fmt: skip
#: the keys Paramiko looks for when ``look_for_keys`` is on (its default)
DEFAULT_KEYS = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")


def refuse_unsupported(resolved: Connection) -> None:
    """Raise ConfigError if Fabric resolved, for this host, a feature this backend lacks."""
    host = resolved.original_host
    what = None
    if resolved.gateway:
        what = "a gateway (gateway, ProxyJump or ProxyCommand)"
    elif resolved.forward_agent:
        what = "agent forwarding"
    else:
        extra = sorted(set(resolved.connect_kwargs) - CONNECT_KWARGS)
        if extra:
            what = f"connect_kwargs {', '.join(extra)}"
    if what:
        raise ConfigError(
            f"murder.ssh_backend asyncssh does not support {what}, which the Fabric config "
            f"sets for {host}; use ssh_backend: fabric for this fleet",
            key="ssh_backend",
        )


class _Peer:
    """What ``conn.client.get_transport()`` gives Fabric's callers: the peer's address."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    def get_transport(self) -> _Peer | None:
        return self if self._conn.is_connected else None

    def getpeername(self) -> tuple[str, int]:
        assert self._conn._ssh is not None
        host, port = self._conn._ssh.get_extra_info("peername")[:2]
        return str(host), int(port)


class AsyncConnection:
    """One host's SSH connection on the pool's event loop, with the part of Connection we use.

    :param resolved: a Fabric Connection to the host, never opened: what
        Fabric resolved (user, port, keys, timeout) for it.
    :param known: the pool's known hosts, or None to accept any host key.
    """

    def __init__(self, resolved: Connection, loop: EventLoop, known: KnownHosts | None) -> None:
        refuse_unsupported(resolved)
        self.original_host: str = resolved.original_host
        self.host: str = resolved.host
        self.port: int = int(resolved.port)
        self.user: str = resolved.user
        self.config = resolved.config
        self.connect_timeout = resolved.connect_timeout
        self.connect_kwargs: dict[str, Any] = dict(resolved.connect_kwargs)
        self.client = _Peer(self)
        self._loop = loop
        self._run_defaults = loop.defaults(resolved.config)
        self._ssh: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._opening: asyncio.Future[asyncssh.SSHClientConnection] | None = None
        self._trusted: list[asyncssh.SSHKey] | None = None
        if known is not None:
            keys = known.find(key_name(self.host, self.port)).values()
            self._trusted = [
                asyncssh.import_public_key(f"{k.get_name()} {k.get_base64()}") for k in keys
            ]

    def __repr__(self) -> str:
        return f"<AsyncConnection host={self.host} port={self.port} user={self.user}>"

    @property
    def is_connected(self) -> bool:
        """Tell whether the SSH connection is open."""
        return self._ssh is not None and not self._ssh.is_closed()

    def open(self) -> None:
        """Connect now (every other method connects when it needs to)."""
        self._loop.call(self._connected())

    def close(self) -> None:
        """Close the connection (and its SFTP session); a closed one stays closed until used."""
        if self._ssh is not None:
            self._loop.call(self._close())

    def sudo(self, command: str, **kwargs: Any) -> Result:
        raise ConfigError(
            "murder.ssh_backend asyncssh does not run sudo; use ssh_backend: fabric",
            key="ssh_backend",
        )

    def run(self, command: str, **kwargs: Any) -> Result:
        """Run ``command`` as Fabric's ``Connection.run`` would, and return its Result.

        :raises UnexpectedExit: on a non-zero exit when ``warn`` is false.
        :raises CommandTimedOut: when ``timeout`` seconds pass first.
        """
        unknown = sorted(set(kwargs) - RUN_KWARGS)
        if unknown or kwargs.get("pty"):
            raise ConfigError(
                f"murder.ssh_backend asyncssh does not support run({', '.join(unknown) or 'pty'}=)",
                key="ssh_backend",
            )
        run = self._run_defaults
        hide = HIDDEN.get(kwargs.get("hide", run.hide), ())
        warn = kwargs.get("warn", run.warn)
        timeout = kwargs.get("timeout", run.timeout)
        if kwargs.get("echo", run.echo) or run.dry:
            print(run.echo_format.format(command=command), flush=True)
        if run.dry:
            return self._result(command, "", "", 0, hide)
        stream = kwargs.get("in_stream")
        data = stream.read().encode() if stream not in (None, False) else None
        out, err, code, timed_out = self._loop.call(self._run(command, data, timeout))
        result = self._result(command, out, err, code, hide)
        if "stdout" not in hide and out:
            sys.stdout.write(out)
        if "stderr" not in hide and err:
            sys.stderr.write(err)
        if timed_out:
            raise CommandTimedOut(result, timeout)  # type: ignore[arg-type]  # seconds, as Invoke
        if code != 0 and not warn:
            raise UnexpectedExit(result)
        return result

    def _result(self, command: str, out: str, err: str, code: int, hide: tuple[str, ...]) -> Result:
        return Result(
            connection=self, stdout=out, stderr=err, encoding="utf-8", command=command,
            shell="", env={}, exited=code, pty=False, hide=hide,
        )  # fmt: skip

    def put(self, local: str, remote: str = "", preserve_mode: bool = True) -> Transfer:
        """Upload the file ``local`` to ``remote`` (a directory, or a path from the home)."""
        local_path = os.path.abspath(os.path.expanduser(str(local)))
        path = self._loop.call(self._put(local_path, remote, preserve_mode))
        return Transfer(local_path, local, path, remote, self)

    def get(self, remote: str, local: str = "", preserve_mode: bool = True) -> Transfer:
        """Download the file ``remote`` to ``local`` (a directory, or the working directory)."""
        target = os.path.expanduser(str(local)) or posixpath.basename(remote)
        if os.path.isdir(target):
            target = os.path.join(target, posixpath.basename(remote))
        target = os.path.abspath(target)
        self._loop.call(self._get(remote, target, preserve_mode))
        return Transfer(target, local, remote, remote, self)

    async def _connected(self) -> asyncssh.SSHClientConnection:
        if self._ssh is not None and not self._ssh.is_closed():
            return self._ssh
        if self._opening is None:
            # the first caller connects; the others wait on the same attempt
            self._opening = asyncio.ensure_future(self._connect())
        try:
            self._ssh = await asyncio.shield(self._opening)
        finally:
            self._opening = None
        self._sftp = None
        return self._ssh

    async def _connect(self) -> asyncssh.SSHClientConnection:
        kw = self.connect_kwargs
        names = kw.get("key_filename") or []
        names = [names] if isinstance(names, str) else list(names)
        if kw.get("look_for_keys", True):
            names += DEFAULT_KEYS
        paths = tuple(dict.fromkeys(p for p in map(os.path.expanduser, names) if os.path.isfile(p)))
        known: Any = None if self._trusted is None else (self._trusted, [], [])
        try:
            return await asyncssh.connect(
                self.host, self.port, username=self.user, known_hosts=known,
                client_keys=self._loop.keypairs(paths, kw.get("passphrase")) if paths else None,
                agent_path=() if kw.get("allow_agent", True) else None,
                password=kw.get("password"), config=None, x509_trusted_certs=None,
                gss_auth=False, gss_kex=False, encryption_algs=CIPHERS,
                connect_timeout=self.connect_timeout or kw.get("timeout"),
            )  # fmt: skip
        except asyncssh.HostKeyNotVerifiable as exc:
            where = key_name(self.host, self.port)
            if self._trusted:
                why = f"host key for {where} does not match known_hosts ({exc.reason}): refused"
            else:
                why = f"host key for {where} not found in known_hosts: refused"
            raise HostError(self.original_host, why) from exc
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            text = str(exc) or type(exc).__name__
            raise HostError(self.original_host, f"cannot connect: {text}") from exc

    async def _run(
        self, command: str, data: bytes | None, timeout: float | None
    ) -> tuple[str, str, int, bool]:
        ssh = await self._connected()
        proc = await ssh.create_process(command, encoding=None)
        # a command may end before it reads its stdin: its exit says what happened
        with contextlib.suppress(asyncssh.Error, OSError):
            if data:
                proc.stdin.write(data)
            proc.stdin.write_eof()
        timed_out = False
        try:
            done = await proc.wait(timeout=timeout)
            out, err, status = done.stdout, done.stderr, done.exit_status
        except asyncssh.TimeoutError as exc:
            proc.close()
            out, err, status, timed_out = exc.stdout, exc.stderr, None, True
        # as Paramiko: -1 when the command ended without a status (a signal, a lost channel)
        code = -1 if status is None else int(status)
        return _text(out), _text(err), code, timed_out

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        ssh = await self._connected()
        if self._sftp is None:
            self._sftp = await ssh.start_sftp_client()
        return self._sftp

    async def _put(self, local: str, remote: str, preserve_mode: bool) -> str:
        sftp = await self._sftp_client()
        path = remote or posixpath.basename(local)
        if await sftp.isdir(path):
            path = posixpath.join(path, posixpath.basename(local))
        await sftp.put(local, path)
        if preserve_mode:
            await sftp.chmod(path, os.stat(local).st_mode & 0o7777)
        return path

    async def _get(self, remote: str, local: str, preserve_mode: bool) -> None:
        sftp = await self._sftp_client()
        await sftp.get(remote, local)
        if preserve_mode:
            os.chmod(local, (await sftp.stat(remote)).permissions & 0o7777)  # type: ignore[operator]

    async def _close(self) -> None:
        ssh, self._ssh, self._sftp = self._ssh, None, None
        if ssh is not None:
            ssh.close()
            await ssh.wait_closed()


#: the streams each of Invoke's ``hide`` values hides
HIDDEN: dict[Any, tuple[str, ...]] = {
    True: ("stdout", "stderr"), "both": ("stdout", "stderr"),
    "out": ("stdout",), "stdout": ("stdout",), "err": ("stderr",), "stderr": ("stderr",),
}  # fmt: skip


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
