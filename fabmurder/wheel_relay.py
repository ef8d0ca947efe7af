"""Setup without N copies from one host: a few relays get the wheels, the others fetch from them.

Installing the agent means about 10 MB of wheels per host. Sent from the
control host over SFTP to every host, that is N copies through one NIC
(10 GB for 1,000 hosts), the very problem fabmurder exists to solve. So
:func:`install_everywhere` uploads the wheels to at most :data:`RELAYS`
hosts, installs the agent there, and starts the host command ``serve``
(:mod:`fabmurder.host.serve`) on each, which hands out those wheels over
HTTP on ``murder.setup_port``. Every other host fetches them from one relay
(round robin) with its own Python, checking each file against the SHA-256
the control host computed; a file that differs is refused and the host
fails with the relay named. The relays are stopped at the end, whatever
happened. A relay that could not be started is skipped; with none, every
host gets the wheels from here as before.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from fabric import Connection

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.errors import HostError, MurderError
from fabmurder.remote import (
    ConnectionPool,
    HostResults,
    failure_reason,
    feeding,
    host_name,
    quote,
    run_agent,
    shell,
)
from fabmurder.report import Event, EventCallback, ignore

if TYPE_CHECKING:
    from fabmurder.install import WheelSet

#: how the wheels reach one host's empty wheel directory (connection, its path)
Deliver = Callable[[Connection, str], None]
#: install the agent on one host: install.install_host
Install = Callable[[Connection, Settings, "WheelSet", "Deliver | None"], str]

#: hosts that get the wheels from the control host; the rest fetch from them. Three,
#: not four: with four the control host's NIC carried 4.05 x the wheel set
#: (SSH's framing on top of four copies), above issue 16's "at most 4 x"
RELAYS = 3
#: seconds a relay serves at most, should the control side die (it is stopped as soon as
#: setup is done). 900 was too short: 65 hosts behind 2 Mbit/s links need about 15
#: minutes from three relays; 14 of them failed about when the relays' 900 s ran out
#: (the benchmark did not print their reasons)
SERVE_FOR = 3600

#: the fetch, run by the host's own Python (``-I``, on stdin) before any agent exists
FETCH = r"""
import hashlib, os, sys, urllib.request
dest, base, items = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, digest in zip(items[::2], items[1::2]):
    if "/" in name or name.startswith("."):
        sys.exit(f"fabmurder: refusing the wheel name {name!r}")
    part = os.path.join(dest, "." + name + ".part")
    sha = hashlib.sha256()
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(f"{base}/{name}", timeout=120) as r:
            while chunk := r.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
        if sha.hexdigest() != digest:
            sys.exit(f"fabmurder: {name} from {base} has SHA-256 {sha.hexdigest()}, not {digest}")
        os.rename(part, os.path.join(dest, name))
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
"""


def digests(wheels: WheelSet) -> list[tuple[str, str]]:
    """Return (file name, SHA-256) of each wheel, as the fetching hosts check them."""
    return [(p.name, hashlib.sha256(Path(p).read_bytes()).hexdigest()) for p in wheels.paths]


def fetcher(s: Settings, base: str, files: list[tuple[str, str]]) -> Deliver:
    """Return a ``deliver`` for :func:`~fabmurder.install.install_host`: fetch from ``base``."""
    args = " ".join(quote(part) for pair in files for part in pair)

    def deliver(conn: Connection, wheel_dir: str) -> None:
        command = f"{quote(s.python)} -I - {quote(wheel_dir)} {quote(base)} {args}"
        result = conn.run(command, **feeding(FETCH))
        if result.exited != 0:
            raise HostError(host_name(conn), f"fetching the wheels: {failure_reason(result)}")

    return deliver


def address_of(conn: Connection) -> str:
    """Return the address the control host reached ``conn``'s host at (the others use it too)."""
    transport = conn.client.get_transport()
    if transport is None:
        raise OSError(f"{host_name(conn)} is not connected")
    return str(transport.getpeername()[0])


def _pid_file(s: Settings) -> str:
    return s.tmp(contract.RELAY_PID)


def start_relay(conn: Connection, s: Settings, address: str) -> str:
    """Start ``serve`` of the installed wheels on a relay host; return its base URL."""
    run_agent(
        conn, s, "daemon", "start", "--pid-file", _pid_file(s), "--log", s.tmp(contract.RELAY_LOG),
        "--", "serve", "--dir", f"{s.remote_path}/wheels", "--bind", address,
        "--port", s.setup_port, "--for", SERVE_FOR, ok=(0, 3),
    )  # fmt: skip
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{s.setup_port}"


def stop_relay(conn: Connection, s: Settings) -> None:
    """Stop a relay's ``serve`` and remove its log (a relay already gone is fine)."""
    run_agent(conn, s, "daemon", "stop", "--pid-file", _pid_file(s), ok=(0, 1, 3))
    shell(conn, f"rm -f -- {quote(s.tmp(contract.RELAY_LOG))}", "removing the relay's log")


def install_everywhere(
    pool: ConnectionPool,
    s: Settings,
    wheels: WheelSet,
    hosts: Iterable[str],
    install: Install,
    emit: EventCallback = ignore,
) -> HostResults[str]:
    """Install the agent on ``hosts``: the first :data:`RELAYS` from here, the others from those.

    :param install: :func:`fabmurder.install.install_host` (passed in, so that
        this module does not import the one that calls it).
    """
    names = list(dict.fromkeys(hosts))
    if len(names) <= RELAYS:
        return pool.fan_out(names, lambda conn: install(conn, s, wheels, None))
    first = pool.fan_out(names[:RELAYS], lambda conn: install(conn, s, wheels, None))
    # a host that was up to date may hold no wheels to hand out: only fresh installs relay
    fresh = [h for h, value in first.succeeded.items() if value != "up to date"]
    relays: dict[str, str] = {}
    for host in fresh:
        try:
            relays[host] = start_relay(pool.get(host), s, address_of(pool.get(host)))
        except (MurderError, OSError) as exc:
            # that host installs but does not relay; the others do
            why = failure_reason(exc)
            emit(Event("warning", f"cannot relay the wheels: {why}", host))
            continue
    result: HostResults[str] = HostResults(first)
    rest = names[RELAYS:]
    try:
        if not relays:
            result.update(pool.fan_out(rest, lambda conn: install(conn, s, wheels, None)))
            return result
        files = digests(wheels)
        bases = list(relays.values())
        order = {host: bases[i % len(bases)] for i, host in enumerate(rest)}

        def from_relay(conn: Connection) -> str:
            base = order[pool.host_of(conn)]
            return install(conn, s, wheels, fetcher(s, base, files))

        result.update(pool.fan_out(rest, from_relay))
    finally:
        for host in relays:
            # a relay that cannot be stopped exits on its own after SERVE_FOR seconds
            with contextlib.suppress(MurderError):
                stop_relay(pool.get(host), s)
    return result
