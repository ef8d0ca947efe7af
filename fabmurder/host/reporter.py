"""Report an agent's progress to the deploy's tracker (``/report``, see fabmurder.tracker.progress).

The agent hands every status update to :meth:`Reporter.offer`. A change of
state goes out at once; otherwise one heartbeat every
:data:`HEARTBEAT` seconds carries the byte counters. The HTTP requests run
on a thread of their own, over one keep-alive connection, so a slow or
dead tracker never holds up the alert loop: the thread always sends the
latest status and drops the ones it had no time for. :meth:`close` sends
the final state before the agent exits.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import quote_from_bytes, urlsplit

from fabmurder.contract import REPORT_COUNTERS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from http.client import HTTPConnection
    from typing import Any

#: seconds between heartbeats while nothing but bytes changes
HEARTBEAT = 2.0
#: seconds one request may take
REQUEST_TIMEOUT = 5.0


def report_url(announce: str) -> tuple[str, int, str]:
    """Return ``(host, port, path)`` of the ``/report`` beside an announce URL.

    ``http://t:6969/announce/<token>`` reports to ``/report/<token>``, and
    a plain ``/announce`` to ``/report``.

    :raises ValueError: for a URL that is not ``http://.../announce[/token]``.
    """
    parts = urlsplit(announce)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"cannot report to {announce!r}: not an http:// tracker")
    path = parts.path
    if path == "/announce":
        report = "/report"
    elif path.startswith("/announce/") and "/" not in path[len("/announce/") :]:
        report = "/report/" + path[len("/announce/") :]
    else:
        raise ValueError(f"cannot report to {announce!r}: not an .../announce URL")
    return parts.hostname, parts.port or 80, report


def report_query(info_hash: bytes, report_id: str, status: dict[str, Any]) -> str:
    """Return the query string of one report of ``status``."""
    fields = [
        f"info_hash={quote_from_bytes(info_hash, safe='')}",
        f"id={report_id}",
        f"state={status['state']}",
        f"installed={1 if status.get('installed') else 0}",
        *(f"{name}={int(status.get(name) or 0)}" for name in REPORT_COUNTERS),
    ]
    error = status.get("error")
    if error:
        fields.append("error=" + quote_from_bytes(str(error)[:300].encode(), safe=""))
    return "&".join(fields)


class Reporter:
    """Send an agent's status to the tracker from a thread of its own."""

    def __init__(self, announce: str, info_hash: bytes, report_id: str, bind: str) -> None:
        self.host, self.port, self.path = report_url(announce)
        #: the host's fleet address: reports come from it, as announces do
        self.bind = bind
        self.info_hash = info_hash
        self.report_id = report_id
        self.sent_at = 0.0
        self.last_state: str | None = None
        self.failures = 0
        self._pending: dict[str, Any] | None = None
        self._closing = False
        self._wake = threading.Condition()
        self._conn: HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="fabmurder-report", daemon=True)
        self._thread.start()

    def offer(self, status: dict[str, Any]) -> None:
        """Send ``status`` now if its state changed, else at the next heartbeat."""
        now = time.monotonic()
        if status["state"] == self.last_state and now - self.sent_at < HEARTBEAT:
            return
        self.last_state = status["state"]
        self.sent_at = now
        with self._wake:
            self._pending = dict(status)
            self._wake.notify()

    def close(self, timeout: float = REQUEST_TIMEOUT) -> None:
        """Send what is pending (the final state), then stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                status, self._pending = self._pending, None
                closing = self._closing
            if status is not None:
                self._send(status)
            if closing and self._pending is None:
                if self._conn is not None:
                    self._conn.close()
                return

    def _send(self, status: dict[str, Any]) -> None:
        from http.client import HTTPConnection, HTTPException

        target = f"{self.path}?{report_query(self.info_hash, self.report_id, status)}"
        for _attempt in range(2):  # a kept-alive connection the tracker closed: once more
            try:
                if self._conn is None:
                    self._conn = HTTPConnection(
                        self.host, self.port, timeout=REQUEST_TIMEOUT, source_address=(self.bind, 0)
                    )
                self._conn.request("GET", target)
                response = self._conn.getresponse()
                response.read()
                if response.status == 200:
                    return
                break
            except (OSError, HTTPException):
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
        # The tracker refused or is away: the control side sees this host fall
        # silent and asks it over SSH instead. Nothing here may stop the agent.
        self.failures += 1
