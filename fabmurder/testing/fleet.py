"""Real SSH hosts on this Linux machine, for tests, benchmarks and the demo.

:func:`up` brings up *n* hosts. Each host is a network namespace on a bridge
in the root namespace, with its own address in a private /24, its own
OpenSSH ``sshd`` (key-only root login) and its own tmpfs ``/srv`` and
``/tmp``, and Debian's default ``.bashrc`` for root instead of this
machine's (as on a fresh server). Root logs in with the fleet's key; a
user of this machine logs in with a key in ``/srv/home/<user>/.ssh/``
on that host (``sshd.USER_KEYS``). Optionally each host's link is capped with ``tc``. The root
namespace (the control machine) reaches every host at its address.
:func:`down` removes all of it and is idempotent; it also cleans what a
crashed run of the same name left behind.

The fleet's record is kept as JSON in its state directory
(``/run/fabmurder/fleet-<name>/``), so a fleet brought up by one process
(``inv fleet.up``) can be used from another with :func:`load`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection, ThreadingGroup

from fabmurder.testing import net, sshd
from fabmurder.testing.proc import (
    FleetError,
    is_alive,
    signal_if_ours,
    starttime,
    terminate,
    wait_until,
)

STATE_FILE = "fleet.json"
PRIVATE_DIRS = ("/srv", "/tmp")


@dataclass(frozen=True)
class Host:
    """One fleet host: how to reach it by SSH and where it lives on this machine."""

    name: str
    index: int
    address: str
    port: int
    user: str
    netns: str
    veth: str
    #: the host's init process (holds its mount and UTS namespaces)
    pid: int
    pid_starttime: int
    sshd_pid: int | None

    @property
    def host_string(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


@dataclass
class Fleet:
    """A running fleet: its hosts, keys and network, and ways to reach and break them."""

    name: str
    subnet: str
    control_address: str
    bridge: str
    state_dir: Path
    key_path: Path
    known_hosts_path: Path
    rate_mbit: float | None
    hosts: list[Host] = field(default_factory=list)
    private_dirs: list[str] = field(default_factory=lambda: list(PRIVATE_DIRS))
    #: how many /24 networks the hosts' addresses span (a tracker's racks)
    racks: int = 1
    #: host path -> this machine's directory shown there read-only on every host
    shared: dict[str, str] = field(default_factory=dict)

    # -- records --------------------------------------------------------------

    def host(self, ref: Host | str | int) -> Host:
        """Return the current record of a host given by record, name, address or index."""
        key = ref.name if isinstance(ref, Host) else ref
        for h in self.hosts:
            if key in (h.name, h.address, h.index):
                return h
        raise FleetError(f"fleet {self.name!r} has no host {key!r}")

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    def save(self) -> None:
        """Write the fleet record (atomically) to its state directory."""
        record = dataclasses.asdict(self)
        for key in ("state_dir", "key_path", "known_hosts_path"):
            record[key] = str(record[key])
        tmp = self.state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.state_dir / STATE_FILE)

    # -- Fabric ---------------------------------------------------------------

    def connect_kwargs(self) -> dict[str, Any]:
        return {"key_filename": [str(self.key_path)], "look_for_keys": False, "allow_agent": False}

    def fabric_config(self, **overrides: Any) -> Config:
        """Return a Fabric config that logs in as root with the fleet's key.

        It ignores ``~/.ssh/config``, so the fleet works the same whoever runs it,
        and does not forward local stdin (tests and benchmarks run without one).
        Its SSH config names the fleet's ``known_hosts`` (``UserKnownHostsFile``),
        so fabmurder's strict host-key checking knows the hosts' keys.
        """
        settings: dict[str, Any] = {
            "user": "root",
            "connect_kwargs": self.connect_kwargs(),
            "timeouts": {"connect": 10},
            "run": {"in_stream": False},
        }
        settings.update(overrides)
        ssh_config = paramiko.SSHConfig.from_text(
            f"Host *\n    UserKnownHostsFile {self.known_hosts_path}\n"
        )
        return Config(overrides=settings, ssh_config=ssh_config)

    def connection(self, host: Host | str | int, strict: bool = True) -> Connection:
        """Return a Fabric connection to *host*; *strict* rejects any unknown host key."""
        h = self.host(host)
        conn = Connection(h.address, user=h.user, port=h.port, config=self.fabric_config())
        if strict:
            conn.client.load_host_keys(str(self.known_hosts_path))
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    def group(
        self, hosts: Iterable[Host | str | int] | None = None, strict: bool = True
    ) -> ThreadingGroup:
        """Return a ThreadingGroup over *hosts* (default: every host)."""
        chosen = self.hosts if hosts is None else [self.host(h) for h in hosts]
        return ThreadingGroup.from_connections([self.connection(h, strict) for h in chosen])

    def write_fabric_yaml(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a runtime config for ``fab -f PATH`` that reaches the fleet's hosts.

        The file is JSON, which YAML parsers read too. It sets the key through
        ``connect_kwargs`` because ``ssh_config_path`` is not applied from a
        runtime file. *extra* is merged in at the top level (e.g. ``murder``);
        ``murder.known_hosts`` names the fleet's host keys unless *extra* does.
        """
        settings: dict[str, Any] = {
            "user": "root",
            "connect_kwargs": self.connect_kwargs(),
            "timeouts": {"connect": 10},
            **(extra or {}),
        }
        settings["murder"] = {
            "known_hosts": str(self.known_hosts_path),
            **settings.get("murder", {}),
        }
        out = Path(path)
        out.write_text(json.dumps(settings, indent=2) + "\n")
        return out

    # -- reaching into hosts without SSH ----------------------------------------

    def _enter(self, host: Host | str | int) -> list[str]:
        h = self.host(host)
        if not is_alive(h.pid, h.pid_starttime):
            raise FleetError(f"host {h.name} of fleet {self.name!r} is not running")
        return ["nsenter", "-t", str(h.pid), "-n", "-m", "-u", "--"]

    def run_in(
        self,
        host: Host | str | int,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside *host*'s namespaces (not over SSH) and return its outcome.

        The host sees its own private dirs: a program under this machine's
        ``/tmp`` (a clone, a venv) is not there. Use ``/usr/bin/python3``.
        """
        return subprocess.run(
            [*self._enter(host), *argv],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def popen_in(
        self, host: Host | str | int, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start *argv* inside *host*'s namespaces and return the Popen (the caller waits)."""
        return subprocess.Popen([*self._enter(host), *argv], **kwargs)

    # -- faults -----------------------------------------------------------------

    def _init_state(self, h: Host) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / h.name / "init.json").read_text())
        return data

    def _replace(self, h: Host, **changes: Any) -> Host:
        new = dataclasses.replace(h, **changes)
        self.hosts = [new if x.name == h.name else x for x in self.hosts]
        self.save()
        return new

    def stop_sshd(self, host: Host | str | int) -> Host:
        """Stop *host*'s sshd listener (open sessions live on, as on a real server)."""
        h = self.host(host)
        if signal_if_ours(h.pid, h.pid_starttime, signal.SIGUSR1):
            wait_until(
                lambda: self._init_state(h)["sshd_pid"] is None, sshd.START_TIMEOUT, "sshd to stop"
            )
        return self._replace(h, sshd_pid=None)

    def start_sshd(self, host: Host | str | int) -> Host:
        """Start *host*'s sshd again and wait until it answers."""
        h = self.host(host)
        before = self._init_state(h)
        if before["sshd_pid"] is not None:
            return self._replace(h, sshd_pid=before["sshd_pid"])
        if not signal_if_ours(h.pid, h.pid_starttime, signal.SIGUSR2):
            raise FleetError(f"host {h.name} of fleet {self.name!r} is not running")
        state = sshd.wait_init(self.state_dir / h.name, before["generation"] + 1)
        return self._replace(h, sshd_pid=state["sshd_pid"])

    def set_link(self, host: Host | str | int, up: bool) -> None:
        """Plug (*up*) or unplug *host*'s network cable."""
        net.set_link(self.host(host).veth, up)

    def down(self) -> None:
        """Remove this fleet (see :func:`down`)."""
        down(self.name)


def sibling_name(base: str, suffix: str) -> str:
    """Return the name of another fleet of the session whose fleet is called ``base``.

    It is ``suffix`` (two characters ``a-z0-9``) after the first three of
    ``base``, so that sessions whose names differ there never bring up, or
    tear down, each other's extra fleets.
    """
    if len(suffix) != 2 or not suffix.isascii() or not suffix.isalnum() or suffix != suffix.lower():
        raise FleetError(f"a sibling suffix is two characters a-z0-9, not {suffix!r}")
    return net.validate_name(base[:3] + suffix)


def state_dir(name: str) -> Path:
    return Path(net.RUN_DIR) / f"fleet-{net.validate_name(name)}"


def load(name: str = "fm") -> Fleet:
    """Reattach to the fleet *name* brought up by this or another process."""
    path = state_dir(name) / STATE_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FleetError(f"fleet {name!r} is not up (no {path})") from None
    hosts = [Host(**h) for h in record.pop("hosts")]
    for key in ("state_dir", "key_path", "known_hosts_path"):
        record[key] = Path(record[key])
    return Fleet(hosts=hosts, **record)


def up(
    n: int,
    rate_mbit: float | None = None,
    name: str = "fm",
    subnet: str | None = None,
    port: int = 22,
    private_dirs: Sequence[str] = PRIVATE_DIRS,
    racks: int | None = None,
    shared: Mapping[str, str] | None = None,
) -> Fleet:
    """Bring up a fleet of *n* hosts called *name* and return it.

    A fleet of the same name that is already up (or left over by a crash) is
    removed first.

    :param n: number of hosts (1-1000; a Linux bridge takes 1024 ports).
    :param rate_mbit: cap on each host's upload and download, in Mbit/s.
    :param name: 1 to 5 characters ``a-z0-9``; names the interfaces and state.
    :param subnet: a block to use instead of the first free one in 10.231.0.0/16
        (a /24, or larger for several racks).
    :param racks: how many /24 networks the addresses span, filled one after
        another (default: as few as hold *n*, 253 to a /24).
    :param shared: host path -> a directory of this machine, mounted there
        read-only on every host (inside a private dir): one copy of an agent
        venv for hundreds of hosts instead of one each.
    :param private_dirs: absolute paths that get an empty tmpfs of their own on
        each host (``/tmp`` with mode 1777, the others 0755). Anything else
        on the hosts is this machine's file system, shared by all of them.
    """
    net.validate_name(name)
    if not all(d.startswith("/") and ":" not in d for d in private_dirs):
        raise FleetError(f"private_dirs must be absolute paths: {list(private_dirs)}")
    if not 1 <= n <= 1000:
        raise FleetError(f"a fleet has 1 to 1000 hosts, not {n}")
    racks = racks or -(-n // net.PER_RACK)
    shared = dict(shared or {})
    for path, source in shared.items():
        if not any(path.startswith(d.rstrip("/") + "/") for d in private_dirs):
            raise FleetError(f"shared path {path} must lie inside a private dir {private_dirs}")
        if not os.path.isdir(source):
            raise FleetError(f"shared source {source} is not a directory")
        real = os.path.realpath(source)
        if any(real == d or real.startswith(d.rstrip("/") + "/") for d in private_dirs):
            raise FleetError(
                f"shared source {source} lies in {private_dirs}, which each host hides "
                "behind its own tmpfs: put it elsewhere (under /run/fabmurder, say)"
            )
    if not 1 <= racks <= n:
        raise FleetError(f"{n} hosts cannot span {racks} racks")
    down(name)
    root = state_dir(name)
    root.mkdir(parents=True, mode=0o700)
    try:
        return _build(root, n, rate_mbit, name, subnet, port, private_dirs, racks, shared)
    except BaseException:
        down(name)
        raise


def _build(
    root: Path,
    n: int,
    rate_mbit: float | None,
    name: str,
    subnet: str | None,
    port: int,
    private_dirs: Sequence[str],
    racks: int = 1,
    shared: dict[str, str] | None = None,
) -> Fleet:
    key_path = root / "id_ed25519"
    authorized = root / "authorized_keys"
    names = [f"{name}-{i}" for i in range(1, n + 1)]
    for host_name in names:
        (root / host_name).mkdir(mode=0o700)
    net.parallel(
        lambda p: sshd.keygen(p, f"fabmurder fleet {name}"),
        [key_path, *[root / h / "ssh_host_ed25519_key" for h in names]],
    )
    authorized.write_text(sshd.public_key(key_path) + "\n")
    os.chmod(authorized, 0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    with net.subnet_lock():
        chosen = net.choose_subnet(subnet, prefix=net.rack_prefix(racks))
        control = net.create_bridge(name, chosen)
        net.make_neighbour_room(n)
    links = net.create_hosts(name, chosen, n, racks)
    if rate_mbit is not None:
        net.shape(links, rate_mbit)

    def start(link: net.Link) -> Host:
        host_name = names[link.index - 1]
        host_dir = root / host_name
        config = sshd.write_config(host_dir, host_name, port, authorized)
        pid, started, sshd_pid = sshd.boot(
            link.netns, host_name, host_dir, config, port, private_dirs, shared
        )
        wait_until(
            lambda: sshd.answers(link.address, port),
            sshd.START_TIMEOUT,
            f"{host_name} on the bridge",
        )
        return Host(
            name=host_name,
            index=link.index,
            address=link.address,
            port=port,
            user="root",
            netns=link.netns,
            veth=link.veth,
            pid=pid,
            pid_starttime=started,
            sshd_pid=sshd_pid,
        )

    hosts = net.parallel(start, links)
    known_hosts = root / "known_hosts"
    known_hosts.write_text(
        "".join(
            f"{h.address if port == 22 else f'[{h.address}]:{port}'} "
            f"{sshd.public_key(root / h.name / 'ssh_host_ed25519_key')}\n"
            for h in hosts
        )
    )
    fleet = Fleet(
        name=name,
        subnet=str(chosen),
        control_address=control,
        bridge=net.bridge_name(name),
        state_dir=root,
        key_path=key_path,
        known_hosts_path=known_hosts,
        rate_mbit=rate_mbit,
        hosts=hosts,
        private_dirs=list(private_dirs),
        racks=racks,
        shared=dict(shared or {}),
    )
    fleet.save()
    fleet.write_fabric_yaml(root / "fabric.yaml")
    return fleet


def down(name: str = "fm") -> None:
    """Remove the fleet *name*: its processes, namespaces, links and state. Idempotent.

    Processes are found by the PIDs the fleet recorded and by membership of
    the fleet's network namespaces, never by a name pattern.
    """
    root = state_dir(name)
    recorded: list[Host] = []
    with contextlib.suppress(FleetError, ValueError, TypeError, KeyError):
        recorded = load(name).hosts
    namespaces, links = net.leftovers(name)
    members = [(pid, starttime(pid)) for ns in namespaces for pid in net.netns_pids(ns)]
    # Everything else in the hosts first, so that each host's init reaps it; then the inits.
    terminate([p for p in members if not _is_hostinit(p[0])])
    inits = {(h.pid, h.pid_starttime) for h in recorded}
    terminate(inits | {p for p in members if _is_hostinit(p[0])})
    net.remove(namespaces, links)
    if root.exists():
        shutil.rmtree(root)


def _is_hostinit(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "fm-hostinit"
    except OSError:
        return False
