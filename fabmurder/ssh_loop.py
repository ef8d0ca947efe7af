"""The asyncssh backend's event loop: one thread carries every connection of a pool.

The pool's workers (at most ``parallel`` threads) hand coroutines to
:meth:`EventLoop.call` and wait for their results. What every connection of
a pool shares is read once here: the client keys, and the Invoke config's
``run`` defaults.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import asyncssh

T = TypeVar("T")

#: threads of the event loop's executor (name resolution)
RESOLVERS = 2


class RunDefaults(NamedTuple):
    """The Invoke config's ``run`` defaults a command reads when its caller does not say."""

    hide: Any
    warn: bool
    echo: bool
    dry: bool
    echo_format: str
    timeout: float | None


class EventLoop:
    """One asyncio event loop in one daemon thread, shared by every connection of a pool."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # getaddrinfo runs in the loop's executor: a few threads, not min(32, cores + 4)
        self.loop.set_default_executor(
            ThreadPoolExecutor(max_workers=RESOLVERS, thread_name_prefix="murder-ssh-resolve")
        )
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="murder-ssh", daemon=True
        )
        self._thread.start()
        self._keys: dict[tuple[Any, ...], Sequence[asyncssh.SSHKeyPair]] = {}
        self._defaults: dict[int, RunDefaults] = {}
        self._lock = threading.Lock()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def keypairs(
        self, paths: tuple[str, ...], passphrase: str | None
    ) -> Sequence[asyncssh.SSHKeyPair]:
        """Return the client keys in ``paths``, read once per pool."""
        with self._lock:
            found = self._keys.get((paths, passphrase))
            if found is None:
                found = self._keys[(paths, passphrase)] = asyncssh.load_keypairs(
                    list(paths), passphrase=passphrase, ignore_encrypted=passphrase is None
                )
            return found

    def defaults(self, config: Any) -> RunDefaults:
        """Return ``config``'s run() defaults, read once per pool (an Invoke lookup is slow)."""
        with self._lock:
            found = self._defaults.get(id(config))
            if found is None:
                run = config.run
                found = self._defaults[id(config)] = RunDefaults(
                    run.hide, run.warn, run.echo, run.dry, run.echo_format,
                    config.timeouts.command,
                )  # fmt: skip
            return found

    def close(self) -> None:
        """Stop the loop and its thread (every connection should be closed first)."""
        if self.loop.is_closed():
            return
        self.call(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
