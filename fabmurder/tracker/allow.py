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


def parse_allow_entries(text: str) -> dict[bytes, str | None]:
    """Return info-hash -> deploy token (or None) for each line ``HEX [TOKEN]``; skip bad lines."""
    entries: dict[bytes, str | None] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or len(words[0]) != 40:
            continue
        try:
            info_hash = bytes.fromhex(words[0])
        except ValueError:
            continue
        entries[info_hash] = words[1] if len(words) > 1 else None
    return entries


def parse_allow_file(text: str) -> frozenset[bytes]:
    """Return the 20-byte info-hashes listed in an allow-list text; skip bad lines."""
    return frozenset(parse_allow_entries(text))


class AllowList:
    """Answer whether an info-hash is allowed, rereading the file when it changes."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.hashes: frozenset[bytes] = frozenset()
        #: info-hash -> the deploy token registered with it (None: none)
        self.tokens: dict[bytes, str | None] = {}
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
                self.tokens = parse_allow_entries(handle.read())
        except OSError:
            # A missing file allows nothing: safer than serving every swarm.
            self.tokens = {}
        hashes = frozenset(self.tokens)
        if hashes != self.hashes:
            log.debug("allow-list %s now holds %d info-hashes", self.path, len(hashes))
            self.hashes = hashes
            if self.on_change is not None:
                self.on_change(hashes)
        return True

    def token_of(self, info_hash: bytes) -> str | None:
        """Return the deploy token registered with ``info_hash`` (None if none or not allowed)."""
        return self.tokens.get(info_hash) if info_hash in self else None

    def __contains__(self, info_hash: object) -> bool:
        if info_hash in self.hashes:
            self.refresh()
            return info_hash in self.hashes
        self._checked_at = float("-inf")
        self.refresh()
        return info_hash in self.hashes
