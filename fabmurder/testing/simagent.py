"""A SIMULATED peer agent, for the simulated fleet (:mod:`fabmurder.testing.simfleet`).

It is not the agent. There is no libtorrent and no data: a simulated peer
announces to the run's REAL tracker (``/announce/<deploy token>``, every
:data:`REANNOUNCE` seconds as the real agents do, with ``left`` set),
waits until the tracker counts a seeder, "downloads" for a fixed time,
makes ``<dest>/<tag>`` and its marker on disk, and reports every change of
state and a heartbeat every :data:`HEARTBEAT` seconds to the tracker's
``/report`` over one kept-alive HTTP connection from its own address, as
``fabmurder.host.reporter`` does. Its status record has the shape of the
real status file (``contract.StatusRecord``), so ``poll`` answers as the
real host command does.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit

from fabmurder import contract
from fabmurder.host.reporter import HEARTBEAT, report_query

#: seconds between announces, as the real agents re-announce
REANNOUNCE = 10.0
#: seconds a simulated download takes once the tracker counts a seeder
TRANSFER = 1.0
_COMPLETE = re.compile(rb"8:completei(\d+)e")


class Tracker:
    """One kept-alive HTTP/1.1 connection to the tracker, from a given source address."""

    #: requests answered, over every simulated agent of this process
    answered = 0

    def __init__(self, url: str, bind: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.bind = bind
        self.requests = 0
        self.failures = 0
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def get(self, target: str) -> bytes | None:
        """GET ``target``; return the body of a 200 answer, else None (never raises)."""
        async with self._lock:
            for _attempt in range(2):  # a kept-alive connection the tracker closed: once more
                try:
                    if self._io is None:
                        self._io = await asyncio.wait_for(
                            asyncio.open_connection(
                                self.host, self.port, local_addr=(self.bind, 0)
                            ),
                            5,
                        )
                    reader, writer = self._io
                    writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                    body = await reader.readexactly(int(length.group(1)) if length else 0)
                    self.requests += 1
                    Tracker.answered += 1
                    if b"connection: close" in head.lower():
                        self.close()
                    return body if head.startswith(b"HTTP/1.1 200") else None
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    self.close()
            self.failures += 1
            return None

    def close(self) -> None:
        if self._io is not None:
            self._io[1].close()
            self._io = None


@dataclass
class SimAgent:
    """One simulated peer agent and its status record."""

    pid: int
    tag: str
    info_hash: bytes
    announce: str
    report_id: str | None
    bind: str
    port: int
    dest: str
    sha256: str
    total: int
    timeout: float
    seed_after: float
    status: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    peer_id: bytes = field(default_factory=lambda: b"-SIM001-" + secrets.token_hex(6).encode())

    def __post_init__(self) -> None:
        now = time.time()
        self.status = {
            "role": "peer", "tag": self.tag, "info_hash": self.info_hash.hex(), "pid": self.pid,
            "state": "starting", "installed": False, "error": None, "total": self.total,
            "done": 0, "uploaded": 0, "from_seeder": 0, "from_peers": 0, "hash_failures": 0,
            "peers": 0, "started_at": now, "downloaded_at": None, "installed_at": None,
            "updated_at": now,
        }  # fmt: skip
        self.tracker = Tracker(self.announce, self.bind)
        self._reported = ("", 0.0)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """End the agent as SIGTERM ends the real one (state ``stopped``)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _set(self, **changes: Any) -> None:
        self.status.update(changes, updated_at=time.time())
        self.changed.set()
        self.changed = asyncio.Event()

    async def _report(self, force: bool = False) -> None:
        """Report to the tracker: on a change of state, else once a heartbeat."""
        if not self.report_id:
            return
        state, at = self._reported
        now = time.monotonic()
        if not force and self.status["state"] == state and now - at < HEARTBEAT:
            return
        self._reported = (self.status["state"], now)
        _, _, path = self.announce.partition("/announce")
        query = report_query(self.info_hash, self.report_id, self.status)
        await self.tracker.get(f"/report{path}?{query}")

    async def _announce(self, event: str = "") -> int:
        """Announce as a peer; return how many seeders the tracker counts (0 on failure)."""
        path = urlsplit(self.announce).path
        left = self.total - int(self.status["done"])
        query = (
            f"info_hash={quote_from_bytes(self.info_hash, safe='')}"
            f"&peer_id={quote_from_bytes(self.peer_id, safe='')}&port={self.port}"
            f"&uploaded=0&downloaded={self.status['done']}&left={left}&compact=1&numwant=50"
        )
        body = await self.tracker.get(f"{path}?{query}" + (f"&event={event}" if event else ""))
        found = _COMPLETE.search(body or b"")
        return int(found.group(1)) if found else 0

    async def _beat(self, seconds: float) -> None:
        """Spend ``seconds``, with a heartbeat report as the real agent sends."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, HEARTBEAT))
            await self._report()

    async def _run(self) -> None:
        began = time.monotonic()
        try:
            await self._report(force=True)
            self._set(state="downloading")
            await self._report()
            seeders, announced = await self._announce("started"), time.monotonic()
            while seeders < 1:
                if time.monotonic() - began > self.timeout:
                    raise TimeoutError(f"timed out after {self.timeout:g}s at 0%")
                await self._beat(max(0.0, announced + REANNOUNCE - time.monotonic()))
                seeders, announced = await self._announce(), time.monotonic()
            await self._beat(TRANSFER)
            self._set(done=self.total, from_seeder=self.total, downloaded_at=time.time())
            self._set(state="extracting")
            await self._report()
            self._install()
            self._set(state="seeding", installed=True, installed_at=time.time())
            await self._report()
            await self._announce("completed")
            await self._beat(self.seed_after)
            self._set(state="stopped")
        except asyncio.CancelledError:
            error = None if self.status["installed"] else "stopped before the release was installed"
            self._set(state="stopped", error=error)
        except Exception as exc:  # the real agent fails with one sentence
            self._set(state="failed", error=str(exc) or type(exc).__name__)
        finally:
            self.alive = False
            self.changed.set()
            await self._report(force=True)
            self.tracker.close()

    def _install(self) -> None:
        """Make ``<dest>/<tag>`` and its marker, as an installed release leaves them."""
        os.makedirs(os.path.join(self.dest, self.tag), exist_ok=True)
        with open(os.path.join(self.dest, contract.marker(self.tag)), "w") as fh:
            fh.write(self.sha256 + "\n")

    async def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` until the agent is installed, has ended or failed."""
        end = time.monotonic() + seconds
        while self.alive and not self.status["installed"]:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return
