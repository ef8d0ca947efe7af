"""A cProfile of every thread of the control process, for ``bench.scale --profile``.

``cProfile`` profiles the thread that enables it; the pool's fan-out
workers, the watch's threads and the asyncssh backend's event loop thread
are where the control side spends its CPU. :class:`AllThreads` starts a
profiler in each thread started while it is on (``threading.setprofile``)
and in the calling thread, then merges them into one ``pstats`` report.
The profiler costs CPU itself: a profiled run's figures are not the
benchmark's.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
import time
from typing import Any


class AllThreads:
    """Profile the calling thread and every thread started while this is entered."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _boot(self, *args: Any) -> None:
        # runs once, as the new thread's first profile event: hand over to cProfile
        sys.setprofile(None)
        # each thread's own CPU time: waiting on a lock or a socket costs nothing
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append(profile)
        profile.enable()

    def __enter__(self) -> AllThreads:
        threading.setprofile(self._boot)
        self._boot()
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)
        self.profiles[0].disable()

    def stats(self) -> pstats.Stats:
        """Return the merged statistics of every thread's profile."""
        with self._lock:
            profiles = list(self.profiles)
        for profile in profiles:
            profile.create_stats()
        merged = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            merged.add(profile)
        return merged

    def write(self, path: str, top: int = 40) -> str:
        """Dump the merged stats to ``path`` (pstats) and ``path.txt`` (the top entries)."""
        stats = self.stats()
        stats.dump_stats(path)
        out = io.StringIO()
        text = pstats.Stats(path, stream=out)
        text.sort_stats("tottime").print_stats(top)
        text.sort_stats("cumulative").print_stats(top)
        text.sort_stats("tottime").print_callers(top // 2)
        txt = f"{path}.txt"
        with open(txt, "w", encoding="utf-8") as fh:
            fh.write(f"{len(self.profiles)} threads profiled\n" + out.getvalue())
        return txt
