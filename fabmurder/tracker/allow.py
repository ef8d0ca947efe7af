"""Read the tracker's allow-list: which info-hashes it serves.

The file holds one info-hash per line in 40 hex digits; ``#`` starts a
comment and blank lines are ignored. It is reread when its size, mtime or
inode changes, so the pipeline can register a release (an atomic
rename by ``python -m fabmurder allow``) without restarting the tracker.

The file is checked at most once a second on the hot path, and at once
when an info-hash is not found, so a freshly added release is served on its
first announce while a stream of announces costs no ``stat`` per request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("fabmurder.tracker")

_RECHECK_SECONDS = 1.0


def parse_allow_file(text: str) -> frozenset[bytes]:
    """Return the 20-byte info-hashes listed in an allow-list text; skip bad lines."""
    hashes = set()
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip()
        if len(word) != 40:
            continue
        try:
            hashes.add(bytes.fromhex(word))
        except ValueError:
            continue
    return frozenset(hashes)


class AllowList:
    """Answer whether an info-hash is allowed, rereading the file when it changes."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.hashes: frozenset[bytes] = frozenset()
        self.on_change: Callable[[frozenset[bytes]], None] | None = None
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Reread the file if it changed (or if ``force``); return True if it was reread."""
        now = self._clock()
        if not force and now - self._checked_at < _RECHECK_SECONDS:
            return False
        self._checked_at = now
        try:
            st = os.stat(self.path)
        except OSError:
            signature = None
        else:
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature and not force:
            return False
        self._signature = signature
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                hashes = parse_allow_file(handle.read())
        except OSError:
            # A missing file allows nothing: safer than serving every swarm.
            hashes = frozenset()
        if hashes != self.hashes:
            log.debug("allow-list %s now holds %d info-hashes", self.path, len(hashes))
            self.hashes = hashes
            if self.on_change is not None:
                self.on_change(hashes)
        return True

    def __contains__(self, info_hash: object) -> bool:
        if info_hash in self.hashes:
            self.refresh()
            return info_hash in self.hashes
        self._checked_at = float("-inf")
        self.refresh()
        return info_hash in self.hashes
