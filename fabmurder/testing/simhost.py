"""The SIMULATED fleet's SSH server: many hosts in one process, answering fabmurder's commands.

Run by :mod:`fabmurder.testing.simfleet` as
``python -m fabmurder.testing.simhost STATE_DIR [INDEX COUNT]``. Each
simulated host is a real asyncssh listener on its own loopback address with
its own host key; the handshakes, host-key checks, public-key logins,
channels and SFTP (chrooted to the host's directory) are real.

What runs behind a channel:

- On the **seeder** (host 1) every command runs for real, through ``bash``
  with ``SSH_CONNECTION`` set: the real ``create``, ``token``, ``allow``,
  the real tracker and seed agent (libtorrent), the real ``stats --wait``.
- On a **simulated peer**, a command line made only of fabmurder agent
  commands and a few simple words (``test -x``, ``mkdir -p``, ``rm -rf``,
  ``exit``, joined by ``;``, ``&&``, ``||``, ``>/dev/null``) is answered in
  this process: ``put``, ``daemon start -- peer`` (argv parsed by the real
  host-side parser, the agent simulated by :mod:`.simagent`), ``daemon
  stop|status``, ``poll`` and ``finish`` print the real commands' JSON.
  Anything else (the probe, the release layout's scripts) runs through
  ``bash`` for real.

Every path under :data:`ROOT` in a command is the host's own: it becomes
``<state>/hosts/<address>/fmsim/...`` before anything runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import asyncssh

from fabmurder import contract
from fabmurder.host import daemon, finish, put, statusfile, transfer
from fabmurder.host.cli import raise_fd_limit
from fabmurder.testing.simagent import SimAgent, Tracker

#: the root of every configured path on a simulated host (murder.remote_path and friends)
ROOT = "/fmsim"
OPERATORS = (";", "&&", "||")
#: the plain words answered in this process, with the options they must come with
_PLAIN = {"test": ["-x"], "mkdir": ["-p", "--"], "rm": ["-rf", "--"], "exit": [], "true": []}


class Host:
    """One simulated host: its directory, its in-memory files and its agents."""

    def __init__(self, state: Path, address: str, real: bool, agent_python: str) -> None:
        self.address = address
        self.root = state / "hosts" / address
        self.real = real
        self.agent_python = agent_python
        self.files: dict[str, bytes] = {}
        self.agents: dict[str, SimAgent] = {}
        self.next_pid = 1000

    def path(self, text: str) -> str:
        """Return ``text`` with the host's own directory in place of :data:`ROOT`."""
        return text.replace(ROOT + "/", f"{self.root}{ROOT}/")

    # -- the interpreter -------------------------------------------------------

    async def run(
        self, command: str, conn: Any, stdin: asyncssh.SSHReader[str]
    ) -> tuple[int, str, str]:
        """Run one command line; return exit code, stdout and stderr."""
        steps = None if self.real else parse(command, self.agent_python)
        if steps is None:
            return await self.bash(command, conn, stdin)
        status = 0
        out: list[str] = []
        err: list[str] = []
        for op, words, quiet in steps:
            if (op == "&&" and status != 0) or (op == "||" and status == 0):
                continue
            if words[0] == "exit":
                return int(words[1]) if len(words) > 1 else status, "".join(out), "".join(err)
            status, text, why = await self.word(words, stdin)
            out += [] if quiet else [text]
            err.append(why)
        return status, "".join(out), "".join(err)

    async def word(self, words: list[str], stdin: asyncssh.SSHReader[str]) -> tuple[int, str, str]:
        """Run one simple command or agent command in this process."""
        paths = [self.path(w) for w in words[1:] if w.startswith("/")]
        if words[0] == "test":
            return (0 if os.access(paths[0], os.X_OK) else 1), "", ""
        if words[0] == "mkdir":
            for p in paths:
                os.makedirs(p, exist_ok=True)
            return 0, "", ""
        if words[0] == "rm":
            for p in paths:
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                elif os.path.lexists(p):
                    os.unlink(p)
            return 0, "", ""
        if words[0] == "true":
            return 0, "", ""
        return await self.agent(words[5], words[6:], stdin)

    async def agent(
        self, command: str, argv: list[str], stdin: asyncssh.SSHReader[str]
    ) -> tuple[int, str, str]:
        """Answer one host command with the JSON the real one prints."""
        if command == "put":
            args = put.parser().parse_args(argv)
            text = await stdin.read()
            self.files[args.file] = base64.b64decode(text) if args.base64 else text.encode()
            return reply({"file": args.file, "size": len(self.files[args.file])})
        if command == "poll":
            args = statusfile.parser().parse_args(argv)
            agent = self.agents.get(args.pid_file)
            if agent is not None and args.wait:
                await agent.wait(args.wait)
            status = dict(agent.status) if agent else None
            return reply({"status": status, "alive": bool(agent and agent.alive), "error": None})
        if command == "finish":
            return await self.finish(finish.parser().parse_args(argv))
        if command == "daemon":
            args = daemon.parser().parse_args(argv)
            if args.action == "start":
                # --stdin-file: the torrent and the allow-list, one after the other on stdin
                data = (await stdin.read()).encode() if args.stdin_file else b""
                for encoded, count, path in args.stdin_file:
                    chunk, data = data[:count], data[count:]
                    self.files[path] = base64.b64decode(chunk) if encoded else chunk
                return self.start(args.pid_file, args.command)
            agent = self.agents.get(args.pid_file)
            if args.action == "stop":
                record = self.stop(args.pid_file)
                return reply({k: v for k, v in record.items() if k != "pid_file"})
            return reply(
                {"pid_file": args.pid_file, "pid": agent.pid if agent else None,
                 "role": "peer" if agent else None, "alive": bool(agent and agent.alive)}
            )  # fmt: skip
        return 1, "", f"fabmurder: simfleet: {command!r} is not simulated on a peer\n"

    def start(self, pid_file: str, command: list[str]) -> tuple[int, str, str]:
        """``daemon start -- peer ...``: start a simulated peer agent."""
        command = command[1:] if command[:1] == ["--"] else command
        if command[:1] != ["peer"]:
            return 1, "", f"fabmurder: simfleet: only peers are simulated, not {command[:1]}\n"
        old = self.agents.get(pid_file)
        if old is not None and old.alive:
            return 3, "", f"fabmurder: already running (pid {old.pid})\n"
        args = transfer.parser("peer").parse_args(command[1:])
        torrent = self.files.get(args.torrent)
        if torrent is None:
            return 1, "", f"fabmurder: cannot read {args.torrent}\n"
        info_hash, announce, size = torrent_facts(torrent)
        self.next_pid += 1
        agent = SimAgent(
            pid=self.next_pid, tag=args.tag, info_hash=info_hash, announce=announce,
            report_id=args.report_id, bind=args.bind, port=args.port,
            dest=self.path(args.dest), sha256=args.sha256, total=size,
            timeout=args.timeout, seed_after=args.seed_after,
        )  # fmt: skip
        self.agents[pid_file] = agent
        agent.start()
        return reply({"pid": agent.pid, "pid_file": pid_file})

    def stop(self, pid_file: str) -> dict[str, Any]:
        agent = self.agents.pop(pid_file, None)
        if agent is None:
            return {"stopped": False, "pid": None, "reason": "no pid file", "pid_file": pid_file}
        was_alive = agent.alive
        agent.stop()
        reason = "terminated" if was_alive else "not running"
        return {"stopped": was_alive, "pid": agent.pid, "reason": reason, "pid_file": pid_file}

    async def finish(self, args: Any) -> tuple[int, str, str]:
        """``finish --role peer [--tag T] [--clean]``: stop the agents, forget their files.

        With ``--tag``, the peer agent's last status is in the reply, taken
        once its stop has run (state ``stopped``), as the real command reads
        the status file.
        """
        temp = args.temp_path.rstrip("/") + "/"
        names = [
            p for p in self.agents if p.startswith(temp) and p[len(temp) :].startswith("peer-")
        ]
        if args.tag:
            names = [p for p in names if p == f"{temp}peer-{args.tag}.pid"]
        agents = [self.agents[p] for p in names] if "peer" in args.role else []
        stopped = [self.stop(p) for p in names] if "peer" in args.role else []
        ending = [a.task for a in agents if a.task is not None and not a.task.done()]
        if ending:
            await asyncio.wait(ending, timeout=10)
        statuses = None
        if args.tag and "peer" in args.role:
            path = f"{temp}{contract.status_file('peer', args.tag)}"
            missing = f"cannot read status file {path}: No such file or directory"
            final: dict[str, Any] = {"status": None, "error": missing}
            if agents:
                final = {"status": dict(agents[0].status), "error": None}
            statuses = {"peer": final}
        cleaned = None
        if args.clean:
            gone = [n for n in self.files if n.startswith(temp) and args.tag in n]
            for name in gone:
                del self.files[name]
            removed = sorted(n[len(temp) :] for n in gone)
            cleaned = {"temp_path": args.temp_path, "removed": removed, "kept": []}
        out: dict[str, Any] = {"stopped": stopped, "clean": cleaned}
        if statuses is not None:
            out["statuses"] = statuses
        return reply(out)

    async def bash(
        self, command: str, conn: Any, stdin: asyncssh.SSHReader[str]
    ) -> tuple[int, str, str]:
        """Run ``command`` for real, in ``bash``, with the host's paths and SSH environment."""
        peer, local = conn.get_extra_info("peername"), conn.get_extra_info("sockname")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.root), "LANG": "C.UTF-8",
            "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}",
        }  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", self.path(command), cwd=self.root, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                while data := await stdin.read(65536):
                    proc.stdin.write(data.encode())
                    await proc.stdin.drain()
            finally:
                proc.stdin.close()

        feeding = asyncio.ensure_future(feed())
        out, err = await _drain(proc)
        feeding.cancel()
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _drain(proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    await proc.wait()
    return out, err


def reply(obj: dict[str, Any]) -> tuple[int, str, str]:
    return 0, json.dumps(obj, sort_keys=True) + "\n", ""


_TORRENTS: dict[str, tuple[bytes, str, int]] = {}


def torrent_facts(data: bytes) -> tuple[bytes, str, int]:
    """Return a torrent's v1 info-hash, announce URL and size (parsed once per torrent)."""
    key = hashlib.sha256(data).hexdigest()
    if key not in _TORRENTS:
        import libtorrent as lt

        meta: Any = lt.bdecode(data)
        info = lt.torrent_info(meta)
        v1 = bytes.fromhex(str(info.info_hashes().v1))
        _TORRENTS[key] = (v1, bytes(meta[b"announce"]).decode(), info.total_size())
    return _TORRENTS[key]


def parse(command: str, agent_python: str) -> list[tuple[str, list[str], bool]] | None:
    """Split a command line into (operator, words, output discarded) steps, or None.

    None means the line is more than this interpreter understands (quotes
    around expansions, pipes, subshells): it then runs through bash.
    """
    if any(ch in command for ch in "$`()<*\n"):
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|>")
    lexer.whitespace_split = True
    steps: list[tuple[str, list[str], bool]] = []
    op, quiet = ";", False
    words: list[str] = []
    tokens = list(lexer) + [";"]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in OPERATORS:
            if not words:
                return None
            agent = words[:5] == [agent_python, "-I", "-B", "-m", "fabmurder"] and len(words) > 5
            plain = _PLAIN.get(words[0])
            if not (agent or (plain is not None and words[1 : 1 + len(plain)] == plain)):
                return None
            steps.append((op, words, quiet))
            op, words, quiet = token, [], False
        elif token == ">" and tokens[i + 1 : i + 2] == ["/dev/null"]:
            quiet, i = True, i + 1
        elif token[:1] in ";&>|":
            return None  # a pipe, a background job, another redirection
        else:
            words.append(token)
        i += 1
    return steps


async def serve(state: Path, index: int, count: int) -> None:
    """Listen for every host of the slice ``index`` of ``count`` of the fleet in ``state``."""
    spec = json.loads((state / "simfleet.json").read_text())
    client_keys = asyncssh.import_authorized_keys(spec["authorized_key"])
    keys = json.loads((state / "host_keys.json").read_text())
    servers = []
    for i, address in enumerate(spec["addresses"]):
        if i % count != index:
            continue
        host = Host(state, address, real=(i == 0), agent_python=spec["agent_python"])
        servers.append(await listen(host, keys[address], client_keys, spec["port"]))
    sys.stdout.write(f"ready {len(servers)}\n")
    sys.stdout.flush()
    counted = state / f"requests-{index}"
    while True:  # for the benchmark: the simulated agents' requests to the tracker
        counted.write_text(str(Tracker.answered))
        await asyncio.sleep(0.5)


async def listen(host: Host, key: str, client_keys: Any, port: int) -> Any:
    """Start one host's SSH server."""

    async def process(proc: asyncssh.SSHServerProcess[str]) -> None:
        try:
            code, out, err = await host.run(str(proc.command or ""), proc, proc.stdin)
        except Exception as exc:  # a bug of the simulation shows as the command's failure
            code, out, err = 1, "", f"fabmurder: simfleet: {type(exc).__name__}: {exc}\n"
        proc.stdout.write(out)
        proc.stderr.write(err)
        proc.exit(code)

    return await asyncssh.create_server(
        asyncssh.SSHServer, host.address, port,
        server_host_keys=[asyncssh.import_private_key(key)],
        authorized_client_keys=client_keys, process_factory=process,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(host.root).encode()),
        encoding="utf-8", keepalive_interval=0,
    )  # fmt: skip


def main(argv: list[str]) -> int:
    state = Path(argv[0])
    index, count = (int(argv[1]), int(argv[2])) if len(argv) > 2 else (0, 1)
    raise_fd_limit(1 << 20)
    asyncio.run(serve(state, index, count))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
