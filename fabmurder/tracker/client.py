"""Drive a tracker from outside: start it as a child process, speak raw HTTP to it.

Tests and the benchmark use this to check the real program over real
sockets. The runtime package never imports it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

import bencodepy

_LISTENING = re.compile(r"listening on http://(?P<host>[^/]+):(?P<port>\d+)/")


def query(**params: Any) -> str:
    """Build a query string; bytes values are percent-encoded byte by byte."""
    parts = []
    for name, value in params.items():
        if value is None:
            continue
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(f"{name}={quote_from_bytes(raw, safe='')}")
    return "&".join(parts)


def announce_target(
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    left: int = 0,
    path: str = "/announce",
    **extra: Any,
) -> str:
    """Return the request target of one announce."""
    params = {
        "info_hash": info_hash,
        "peer_id": peer_id,
        "port": port,
        "uploaded": 0,
        "downloaded": 0,
        "left": left,
        **extra,
    }
    return f"{path}?{query(**params)}"


def compact_peers(data: bytes) -> list[tuple[str, int]]:
    """Decode a BEP 23 compact IPv4 peer list."""
    return [
        (socket.inet_ntoa(data[i : i + 4]), int.from_bytes(data[i + 4 : i + 6], "big"))
        for i in range(0, len(data) - len(data) % 6, 6)
    ]


@dataclass
class Response:
    """One HTTP response as seen on the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def bdecode(self) -> dict[bytes, Any]:
        """Decode the bencoded body."""
        value = bencodepy.decode(self.body)
        assert isinstance(value, dict)
        return value


def read_response(sock: socket.socket, buf: bytes = b"") -> tuple[Response, bytes]:
    """Read one HTTP response (by Content-Length); return it and the bytes after it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {buf!r}")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a body")
        buf += chunk
    return Response(status, headers, buf[:length]), buf[length:]


def connect(
    host: str, port: int, source: str | None = None, timeout: float = 10.0
) -> socket.socket:
    """Open a TCP connection, from ``source`` (an address of this machine) if given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def get(
    host: str, port: int, target: str, source: str | None = None, timeout: float = 10.0
) -> Response:
    """Send one ``GET`` on a fresh connection and read the reply."""
    with connect(host, port, source, timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response, _ = read_response(sock)
        return response


@dataclass
class TrackerProcess:
    """A tracker running as ``python -m fabmurder tracker`` in a child process."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        args: Sequence[str] = (),
        bind: str = "127.0.0.1",
        cpu: int | None = None,
        timeout: float = 20.0,
    ) -> TrackerProcess:
        """Start a tracker on a free port and wait until it listens.

        :param cpu: pin the tracker to this CPU (for the benchmark).
        :raises RuntimeError: if it exits or stays silent until ``timeout``.
        """
        command = [sys.executable, "-m", "fabmurder", "tracker", "--bind", bind, "--port", "0"]

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        process = subprocess.Popen(
            [*command, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=pin if cpu is not None else None,
        )
        assert process.stderr is not None
        log: list[str] = []
        found = threading.Event()
        where: dict[str, str] = {}

        def drain() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.append(line)
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    where.update(match.groupdict())
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(timeout) or not where:
            process.kill()
            process.wait()
            raise RuntimeError("tracker did not start:\n" + "\n".join(log))
        return cls(process, where["host"], int(where["port"]), log)

    def get(self, target: str, source: str | None = None) -> Response:
        """Send one ``GET`` to this tracker."""
        return get(self.host, self.port, target, source)

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """Return the tracker's resident memory, from ``/proc``."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the tracker, wait for it to exit and return its exit code."""
        if self.alive():
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        """Wait until a log line contains ``text``; return whether one did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.log):
                return True
            time.sleep(0.05)
        return False
