"""Deploys on the fleet for the reliability tests: config, inspection and fault injection.

A :class:`DeployKit` wraps a running :class:`~fabmurder.testing.fleet.Fleet`
whose hosts all carry the agent: it builds the ``murder`` config of a
deploy, runs the pipeline in the background while a test breaks something,
and looks at the hosts directly (status files, processes, listening
sockets, trees), never through the code under test. Every wait is bounded
and polls a condition.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invoke import Context

from fabmurder.testing.fleet import Fleet, Host
from fabmurder.testing.proc import FleetError, wait_until

#: the kit's agent lives here on every host, apart from the one the pipeline and
#: release tests install and replace (/srv/fabmurder/agent): a test there that
#: installs another wheel set must not leave the kit's deploys a stale agent to
#: reinstall inside their own time limits (seen in full runs: 40 s went on it)
AGENT = "/srv/fabmurder/kit-agent"
AGENT_PYTHON = f"{AGENT}/venv/bin/python"

MANIFEST = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
for here, dirs, files in os.walk(root):
    for name in dirs + files:
        path = os.path.join(here, name)
        st = os.lstat(path)
        rel = os.path.relpath(path, root)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ["link", os.readlink(path)]
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ["dir", oct(stat.S_IMODE(st.st_mode))]
        else:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[rel] = ["file", oct(stat.S_IMODE(st.st_mode)), digest]
print(json.dumps(out, sort_keys=True))
"""

MAKE_TREE = r"""
set -e
mkdir -p "$1/lib/deep" "$1/empty" "$1/bin"
printf 'config\n' > "$1/lib/deep/app.conf"
ln -s lib/deep/app.conf "$1/current.conf"
printf '#!/bin/sh\necho run\n' > "$1/bin/run"
chmod 755 "$1/bin/run"
printf 'quoted\n' > "$1/it's a \"name\".txt"
head -c "$2" /dev/urandom > "$1/lib/blob.bin"
"""

#: GET a URL (an HTTP error is an answer too); print the status and the body in hex
HTTP_GET = r"""
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(str(code) + " " + body.hex())
"""

#: poll a condition until it is truthy, with a deadline (the fleet's own helper)
wait_for = wait_until


def agent_processes(fleet: Fleet, host: Host | int | str) -> list[str]:
    """Return the command lines of fabmurder agents (``-m fabmurder``, the agent venv) on a host."""
    netns = fleet.host(host).netns
    pids = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it ended meanwhile
        text = " ".join(part.decode(errors="replace") for part in argv if part)
        if "-m fabmurder" in text or AGENT in text:
            found.append(text)
    return found


@dataclass
class Background:
    """A pipeline call running on its own thread; :meth:`result` re-raises its error."""

    thread: threading.Thread
    outcome: dict[str, Any] = field(default_factory=dict)
    #: the call's progress events, as its ``on_event`` callback got them
    events: list[Any] = field(default_factory=list)

    def recent(self, count: int = 6) -> str:
        """Return the last ``count`` events, one line each (for error messages)."""
        return "; ".join(f"{e.kind} {e.host or '-'}: {e.message}" for e in self.events[-count:])

    def done(self) -> bool:
        return not self.thread.is_alive()

    def check(self) -> None:
        """Raise if the call has already ended: its exception, or a FleetError."""
        if self.done():
            self.result(0)
            raise FleetError("the pipeline call ended before the awaited condition")

    def result(self, timeout: float) -> Any:
        """Wait up to ``timeout`` for the call and return its value, or raise its exception."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise FleetError(f"the pipeline call did not end within {timeout:g} s")
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome.get("value")


@dataclass
class DeployKit:
    """A fleet with the agent on every host, and the base ``murder`` config of a deploy.

    Host 1 is tracker and seeder; the peers are chosen per test.
    """

    fleet: Fleet
    wheel_dir: str
    temp_path: str = "/srv/fabmurder/rtmp"
    destination_path: str = "/srv/rel"
    files_path: str = "/srv/rbuild"
    tracker_port: int = 8997
    peer_port: int = 6882

    # -- config ----------------------------------------------------------------

    def hosts(self, *indexes: int) -> list[Host]:
        """Return fleet hosts by 1-based index."""
        return [self.fleet.host(i) for i in indexes]

    def murder(self, peers: Iterable[int] = (2, 3, 4, 5), **extra: Any) -> dict[str, Any]:
        """Return the ``murder`` subtree of a deploy from host 1 to ``peers``."""
        config: dict[str, Any] = {
            "wheel_dir": self.wheel_dir,
            "tracker": self.fleet.host(1).host_string,
            "seeder": self.fleet.host(1).host_string,
            "peers": [self.fleet.host(i).host_string for i in peers],
            "remote_path": AGENT,
            "temp_path": self.temp_path,
            "files_path": self.files_path,
            "destination_path": self.destination_path,
            "tracker_port": self.tracker_port,
            "peer_port": self.peer_port,
            "known_hosts": str(self.fleet.known_hosts_path),
            "strict_host_keys": True,
            "timeout": 40,
            "seed_after": 10,
            "poll_interval": 0.3,
            "piece_size": 65536,
        }
        config.update(extra)
        return config

    def context(self, murder: dict[str, Any]) -> Context:
        """Return an Invoke context for the fleet with ``murder`` as its config subtree."""
        config = self.fleet.fabric_config()
        config["murder"] = dict(murder)
        return Context(config=config)

    def background(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Background:
        """Start ``fn(*args, **kwargs)`` on a thread and return its handle."""
        outcome: dict[str, Any] = {}
        events: list[Any] = []
        if "on_event" not in kwargs:
            kwargs["on_event"] = events.append

        def body() -> None:
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the test by Background.result
                outcome["error"] = exc

        thread = threading.Thread(target=body, name="deploy", daemon=True)
        thread.start()
        return Background(thread, outcome, events)

    # -- looking at hosts ------------------------------------------------------

    def known_hosts_with(self, directory: Path, changed: int, unknown: int) -> Path:
        """Write a copy of the fleet's known_hosts where host ``changed`` has another key.

        Host ``unknown`` is left out. Returns the copy's path in ``directory``.
        """
        other = directory / "other_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
            check=True,
            capture_output=True,
        )
        fake = other.with_suffix(".pub").read_text().split()[:2]
        lines = []
        for line in self.fleet.known_hosts_path.read_text().splitlines():
            name = line.split()[0]
            if name == self.fleet.host(changed).address:
                line = f"{name} {' '.join(fake)}"
            elif name == self.fleet.host(unknown).address:
                continue
            lines.append(line)
        path = directory / "known_hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def sh(self, host: Host | int, script: str, *args: str, check: bool = True) -> str:
        """Run a shell script inside ``host`` (not over SSH) and return its stdout."""
        out = self.fleet.run_in(host, ["sh", "-c", script, "sh", *args], check=check)
        return out.stdout

    def make_tree(self, host: Host | int, path: str, size: int) -> dict[str, Any]:
        """Build a release tree at ``path`` on ``host`` (one file of ``size`` bytes)."""
        self.sh(host, 'rm -rf -- "$1"', path)
        self.sh(host, MAKE_TREE, path, str(size))
        return self.manifest(host, path)

    def manifest(self, host: Host | int, path: str) -> dict[str, Any]:
        """Return every entry under ``path`` on ``host``: kind, mode and SHA-256."""
        out = self.fleet.run_in(host, ["/usr/bin/python3", "-c", MANIFEST, path])
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def listing(self, host: Host | int, path: str) -> list[str]:
        """Return ``ls -A`` of ``path`` on ``host`` (empty if it does not exist)."""
        return self.sh(host, 'ls -A -- "$1" 2>/dev/null || true', path).split("\n")[:-1]

    def status(self, host: Host | int, name: str) -> dict[str, Any] | None:
        """Return the agent status file ``<temp_path>/<name>.status.json`` on ``host``."""
        text = self.sh(
            host, 'cat -- "$1" 2>/dev/null || true', f"{self.temp_path}/{name}.status.json"
        )
        try:
            value = json.loads(text) if text.strip() else None
        except ValueError:
            return None  # caught mid-rewrite
        return value if isinstance(value, dict) else None

    def wait_status(
        self,
        host: Host | int,
        name: str,
        test: Callable[[dict[str, Any]], bool],
        timeout: float,
        run: Background | None = None,
    ) -> dict[str, Any]:
        """Wait until ``host``'s status file ``name`` satisfies ``test``; return it.

        With ``run``, a pipeline call that ends first is an error (its own, if it raised).
        """

        last: list[dict[str, Any] | None] = [None]

        def check() -> dict[str, Any] | None:
            if run is not None:
                run.check()
            status = last[0] = self.status(host, name)
            return status if status is not None and test(status) else None

        try:
            found: dict[str, Any] = wait_for(
                check, timeout, f"{name} on {self.fleet.host(host).name}"
            )
        except FleetError as exc:
            events = f"; the run's last events: {run.recent()}" if run is not None else ""
            raise FleetError(f"{exc}; its last status: {last[0]}{events}") from None
        return found

    def pid(self, host: Host | int, pid_file: str) -> int | None:
        """Return the PID recorded in ``<temp_path>/<pid_file>`` on ``host``."""
        text = self.sh(host, 'cat -- "$1" 2>/dev/null || true', f"{self.temp_path}/{pid_file}")
        try:
            pid = json.loads(text)["pid"] if text.strip() else None
        except (ValueError, KeyError, TypeError):
            return None
        return int(pid) if isinstance(pid, int) else None

    def kill(self, host: Host | int, pid_file: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the agent named by ``pid_file`` on ``host``; return its PID."""
        pid = self.pid(host, pid_file)
        if pid is None:
            raise FleetError(f"no {pid_file} on {self.fleet.host(host).name}")
        self.sh(host, f"kill -{int(sig)} {pid}")
        wait_for(lambda: not self.alive(host, pid), 10, f"pid {pid} to die")
        return pid

    def http_get(self, host: Host | int, url: str) -> tuple[int, bytes]:
        """GET ``url`` from inside ``host``; return the HTTP status and body."""
        out = self.fleet.run_in(host, ["/usr/bin/python3", "-c", HTTP_GET, url]).stdout
        code, _, body = out.partition(" ")
        return int(code), bytes.fromhex(body)

    def read_bytes(self, host: Host | int, path: str) -> bytes:
        """Return the content of ``path`` on ``host``."""
        proc = self.fleet.popen_in(host, ["cat", "--", path], stdout=subprocess.PIPE)
        data, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise FleetError(f"cannot read {path} on {self.fleet.host(host).name}")
        return bytes(data)

    def write_bytes(self, host: Host | int, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` on ``host`` (its directory is made)."""
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        argv = ["sh", "-c", script, "sh", path]
        proc = self.fleet.popen_in(host, argv, stdin=subprocess.PIPE)
        proc.communicate(data, timeout=60)
        if proc.returncode != 0:
            raise FleetError(f"cannot write {path} on {self.fleet.host(host).name}")

    def cap_download(self, host: Host | int, kbit: int | None) -> None:
        """Cap ``host``'s download at ``kbit`` kbit/s with ``tc`` (None lifts the cap)."""
        veth = self.fleet.host(host).veth
        if kbit is None:
            subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], capture_output=True)
            return
        tbf = f"tbf rate {int(kbit)}kbit burst 131072 latency 50ms"
        subprocess.run(["tc", "qdisc", "replace", "dev", veth, "root", *tbf.split()], check=True)

    def alive(self, host: Host | int, pid: int) -> bool:
        """Tell whether ``pid`` runs (and is no zombie) inside ``host``."""
        state = self.sh(host, f"cat /proc/{int(pid)}/stat 2>/dev/null || true")
        return bool(state) and state[state.rfind(")") + 2 :][:1] not in ("Z", "X", "")

    def agents(self, host: Host | int) -> list[str]:
        """Return the command lines of the kit's fabmurder agents inside ``host``.

        Those are the agents whose files live under the kit's ``temp_path``;
        agents that other tests left on the same hosts do not count.
        """
        return [p for p in agent_processes(self.fleet, host) if f"{self.temp_path}/" in p]

    def listening(self, host: Host | int) -> list[str]:
        """Return ``address:port`` of every listening TCP socket of a fabmurder process."""
        out = self.sh(host, "ss -Hltnp 2>/dev/null || true")
        found = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and ("python" in line or "fabmurder" in line):
                # ss shows a socket bound to an address on one device as ADDR%DEV:PORT
                addr, _, port = fields[3].rpartition(":")
                found.append(f"{addr.partition('%')[0]}:{port}")
        return found

    def leftovers(self, host: Host | int, tag: str) -> dict[str, list[str]]:
        """Return what a failed deploy of ``tag`` left on ``host``: release, partials, temp."""
        dest = self.listing(host, self.destination_path)
        temp = self.listing(host, self.temp_path)
        return {
            "release": [n for n in dest if n == tag],
            "partial": [n for n in dest if n.startswith(f".{tag}.") and n != f".{tag}.sha256"],
            "temp": [n for n in temp if tag in n],
        }

    def reset(self, hosts: Iterable[int]) -> None:
        """Stop any agent left by a test and remove the kit's temp and destination dirs."""
        stop = (
            f'for f in {shlex.quote(self.temp_path)}/*.pid; do [ -e "$f" ] || continue; '
            f'{AGENT_PYTHON} -m fabmurder daemon stop --pid-file "$f" --timeout 5 >/dev/null; '
            "done; "
            f"rm -rf -- {shlex.quote(self.temp_path)} {shlex.quote(self.destination_path)}"
        )
        for index in hosts:
            self.sh(index, stop, check=False)


def write_fabfile(directory: Path) -> Path:
    """Write the smallest user fabfile: fabmurder's tasks as the ``murder`` collection."""
    path = directory / "fabfile.py"
    path.write_text(
        "from invoke import Collection\n\nimport fabmurder\n\n"
        'ns = Collection()\nns.add_collection(fabmurder.ns, name="murder")\n'
    )
    return path
