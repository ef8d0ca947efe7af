"""The role hosts of one run: connections, fleet addresses and the agent.

A :class:`Run` is what the steps of one pipeline call share: the resolved
settings, one connection per host (:class:`~fabmurder.remote.Pool`), the
event callback, and each host's fleet address, learned from the SSH server
itself so that host strings may be ssh_config aliases or sit behind a
gateway.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fabric import Connection

from fabmurder import install
from fabmurder.config import Settings, settings
from fabmurder.errors import HostError
from fabmurder.remote import QUIET, Pool, failure_reason, host_name
from fabmurder.report import Event, EventCallback, ignore

#: seconds a single status or probe command may take before the host is failed
POLL_TIMEOUT = 60.0


@dataclass
class Run:
    """What the steps of one run share: settings, connections, addresses."""

    s: Settings
    pool: Pool
    emit: EventCallback
    addresses: dict[str, str] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    #: per-host "ok" events are routine (a renderer may leave them out)
    quiet: bool = False
    #: set when the run was interrupted (Ctrl-C) and is cleaning up
    interrupted: bool = False
    #: peers where ``destination_path/<tag>`` exists -> the SHA-256 its marker
    #: records, or "" when there is no marker (the tree is not fabmurder's)
    existing: dict[str, str] = field(default_factory=dict)
    #: why the seeder went away mid-transfer, when it did
    seeder_lost: str | None = None
    #: the secret path element this run's torrent announces under (see agents.deploy_token)
    deploy_token: str | None = None
    #: the tracker's own URL token, once read from (or written to) the tracker host
    tracker_token: str | None = None
    #: host -> the agent's install stamp (wheel-set digest) as the probe read it
    stamps: dict[str, str] = field(default_factory=dict)

    def conn(self, host: str) -> Connection:
        """Return the run's connection to ``host``."""
        return self.pool.get(host)

    def phase(self, message: str) -> None:
        """Tell the callback a step began."""
        self.emit(Event("phase", message))

    def allow_args(self) -> list[str]:
        """Return ``--allow`` arguments naming every role host's address."""
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for addr in self.addresses.values():
            try:
                nets.append(ipaddress.ip_network(addr))
            except ValueError:
                continue
        args: list[str] = []
        for version in (4, 6):
            group = [n for n in nets if n.version == version]
            for net in ipaddress.collapse_addresses(group):  # type: ignore[type-var]
                args += ["--allow", str(net)]
        return args


def open_run(c: Any, on_event: EventCallback | None, **overrides: Any) -> Run:
    """Resolve the settings and open a run (its connections open lazily)."""
    s = settings(c, **overrides)
    pool = Pool(c.config, s.parallel, s.strict_host_keys, s.known_hosts)
    return Run(s, pool, on_event or ignore)


def shell(conn: Connection, command: str, what: str, timeout: float | None = None) -> Any:
    """Run a shell command on ``conn``; raise HostError naming ``what`` if it fails."""
    result = conn.run(command, timeout=timeout, **QUIET)
    if result.exited != 0:
        raise HostError(host_name(conn), f"{what}: {failure_reason(result)}", result)
    return result


def quote(path: str) -> str:
    """Quote one word for the remote shell."""
    return shlex.quote(path)


# -- probing and setup ---------------------------------------------------------------------


def probe(run: Run, hosts: Iterable[str], check_dest: Iterable[str] = ()) -> dict[str, str]:
    """Learn each host's fleet address; return host -> failure reason for the unreachable.

    The address is the one the SSH server answered on (``$SSH_CONNECTION``),
    so host strings may be ssh_config aliases or go through gateways.
    """
    s = run.s
    dest = f"{s.destination_path}/{s.tag}" if s.destination_path else None
    stamp = quote(install.stamp_path(s)) + " 2>/dev/null"
    hosts = [h for h in hosts if h not in run.addresses]
    check = set(check_dest)

    def read(conn: Connection) -> dict[str, str]:
        """Read one host's address (and whether the release exists) over SSH."""
        command = 'printf "addr=%s\\n" "${SSH_CONNECTION:-}"'
        # The agent's install stamp, so that an up-to-date host needs no SSH
        # command of its own in install_agent.
        command += (
            f"; if test -x {quote(s.agent_python)}; then "
            f"printf 'stamp=%s\\n' \"$(cat {stamp})\"; fi"
        )
        if run.pool.host_of(conn) in check and dest:
            marker = f"{s.destination_path}/.{s.tag}.sha256"
            command += (
                f"; if test -e {quote(dest)} || test -L {quote(dest)}; then echo exists=1; "
                f'printf "marker=%s\\n" "$(head -c 64 {quote(marker)} 2>/dev/null)"; fi'
            )
        result = shell(conn, command, "probing the host", timeout=POLL_TIMEOUT)
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    failures: dict[str, str] = {}
    for host, value in run.pool.by_host(run.pool.fan_out(hosts, read)).items():
        if isinstance(value, BaseException):
            failures[host] = failure_reason(value)
            run.unreachable[host] = failures[host]
            continue
        fields = value.get("addr", "").split()
        address = fields[2] if len(fields) >= 3 else resolve(run.conn(host).host)
        run.addresses[host] = address
        run.stamps[host] = value.get("stamp", "").strip()
        if value.get("exists") == "1":
            marker = value.get("marker", "").strip().lower()
            run.existing[host] = marker if len(marker) == 64 else ""
    return failures


def resolve(hostname: str) -> str:
    """Return an address for ``hostname`` as this machine resolves it (a fallback)."""
    try:
        return str(socket.getaddrinfo(hostname, None)[0][4][0])
    except OSError:
        return hostname


def require_reachable(run: Run, failures: dict[str, str], *hosts: str | None) -> None:
    """Raise HostError for the first of ``hosts`` that is in ``failures``."""
    for host in hosts:
        if host and host in failures:
            raise HostError(host, failures[host])


def install_agent(run: Run, hosts: Iterable[str]) -> dict[str, str]:
    """Install the agent on ``hosts``; return host -> failure reason."""
    wheels = install.wheel_set(run.s)
    hosts = list(hosts)
    counts: dict[str, int] = {}
    current = [h for h in hosts if run.stamps.get(h) == wheels.digest]
    if current:
        counts["up to date"] = len(current)
    result = run.pool.by_host(
        run.pool.fan_out(
            [h for h in hosts if h not in current],
            lambda conn: install.install_host(conn, run.s, wheels),
        )
    )
    failures = {}
    for host, value in result.items():
        if isinstance(value, BaseException):
            failures[host] = failure_reason(value)
        else:
            counts[value] = counts.get(value, 0) + 1
            run.emit(Event("host", f"agent {value}", host, {"ok": True, "quiet": True}))
    if counts:
        run.phase("agent: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    return failures


def ensure_agent(run: Run, hosts: Iterable[str]) -> None:
    """Install the agent on ``hosts`` where needed; raise HostError if any fails."""
    failures = install_agent(run, hosts)
    if failures:
        host, reason = next(iter(failures.items()))
        raise HostError(host, f"installing the agent failed: {reason}")
