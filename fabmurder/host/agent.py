"""The agent around one libtorrent session: alerts, byte accounting and the status it reports.

:class:`Agent` owns the session, the torrent handle and the status
dictionary. Every alert passes through :meth:`Agent.pump`, which waits on
libtorrent with a short timeout (never a bare sleep), so deadlines are
seen within a quarter second; a SIGTERM ends the wait at once (a thread
woken by the signal posts an alert). The seed and peer flows that
drive it live in :mod:`fabmurder.host.transfer`.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from fabmurder.errors import ConfigError, MurderError
from fabmurder.host import metainfo, profile
from fabmurder.host.reporter import Reporter
from fabmurder.host.statusfile import write_status
from fabmurder.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the status file is rewritten at most this often (plus on each change of state)
STATUS_INTERVAL = 0.5
#: how long one wait for alerts may block, so signals and deadlines are seen promptly
ALERT_WAIT_MS = 250
#: how long a listen socket may take to open
LISTEN_TIMEOUT = 10.0
#: how often an agent re-announces while the tracker answers: a tracker that
#: died and came back (with no state) learns the swarm again within this time
REANNOUNCE_INTERVAL = 10.0
#: how often it retries while the tracker does not answer
REANNOUNCE_RETRY = 2.0
#: --settings keys with this prefix are the agent's own lab switches, not libtorrent's
EXPERIMENT_PREFIX = "fabmurder_"
#: libtorrent's request unit: every block is 16 KiB except a piece's last one
BLOCK_SIZE = 16 * 1024


class Transfer:
    """Payload bytes received, split between the seeder and everyone else.

    Counted per piece from alerts rather than sampled from
    ``get_peer_info()``: a connection that opens, sends and closes between
    two samples (a peer banned for bad data, a seed dropped when we
    complete) would otherwise be lost. libtorrent 2.1 does not post a
    ``block_finished_alert`` for every block (whole pieces go missing), so a
    block is credited to the peer that sent it when that alert came, and
    otherwise to the peer it was last requested from, once its piece passes
    or fails its hash check.
    """

    def __init__(self, seeder: str | None) -> None:
        self.seeder = seeder
        self.from_seeder = 0
        self.from_peers = 0
        self.requested: dict[tuple[int, int], str] = {}
        self.received: dict[tuple[int, int], str] = {}

    def block_requested(self, piece: int, block: int, ip: str) -> None:
        """Note that ``block`` of ``piece`` was asked of ``ip``."""
        self.requested[(piece, block)] = ip

    def block_received(self, piece: int, block: int, ip: str) -> None:
        """Note that ``block`` of ``piece`` arrived from ``ip``."""
        self.received[(piece, block)] = ip

    def piece_checked(self, piece: int, block_sizes: list[int]) -> None:
        """Credit every block of ``piece`` (passed or failed) to whoever sent it."""
        for block, nbytes in enumerate(block_sizes):
            key = (piece, block)
            ip = self.received.pop(key, None) or self.requested.get(key)
            self.requested.pop(key, None)
            if ip is None:
                continue
            if ip == self.seeder:
                self.from_seeder += nbytes
            else:
                self.from_peers += nbytes

    def totals(self) -> tuple[int, int]:
        """Return ``(from_seeder, from_peers)`` in bytes."""
        return self.from_seeder, self.from_peers


class StopFlag:
    """Set by SIGTERM/SIGINT: the main loop sees it when its alert wait ends."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum: int, frame: Any) -> None:
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def wake_on_signal(agent: Agent) -> None:
    """End the main thread's wait for alerts as soon as a signal arrives.

    Python runs a signal handler only when the main thread is back from C,
    and ``wait_for_alert`` blocks in C for up to ALERT_WAIT_MS: a stop then
    waited up to a quarter second, on every host. The signal's wakeup fd
    wakes a thread that posts an alert (session stats, always posted), so
    the wait returns and the handler runs at once.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def waker() -> None:
        while os.read(read_fd, 64):
            # Looked up each time: holding the session here would keep it from
            # closing (and from announcing "stopped") when the agent lets it go.
            ses = agent.ses
            if ses is not None:
                ses.post_session_stats()

    threading.Thread(target=waker, name="fabmurder-wake", daemon=True).start()


class Agent:
    """One libtorrent session serving or fetching one release, reporting to a status file."""

    def __init__(self, role: str, args: argparse.Namespace, meta: metainfo.Metainfo) -> None:
        self.role = role
        self.args = args
        self.meta = meta
        self.tag = meta.name[: -len(".tar")] if meta.name.endswith(".tar") else meta.name
        now = time.time()
        self.status: dict[str, Any] = {
            "role": role,
            "tag": self.tag,
            "info_hash": meta.info_hash,
            "pid": os.getpid(),
            "state": "starting",
            "installed": False,
            "error": None,
            "total": meta.size,
            "done": 0,
            "uploaded": 0,
            "from_seeder": 0,
            "from_peers": 0,
            "hash_failures": 0,
            "peers": 0,
            "started_at": now,
            "downloaded_at": None,
            "installed_at": None,
            "updated_at": now,
            # CPU seconds of the whole process and of the Python loop's own
            # thread: the benchmark reports CPU per MiB and the agent's overhead.
            "cpu_seconds": 0.0,
            "loop_cpu_seconds": 0.0,
        }
        self.transfer = Transfer(getattr(args, "seeder", None))
        self.written_at = 0.0
        self.ses: Any = None
        self.handle: Any = None
        #: torrent_finished seen, and cache flushes confirmed after it (see _flush)
        self.finished = False
        self.flushes_after_finish = 0
        #: (leechers, when) from the last scrape reply not yet looked at
        self.scrape: tuple[int, float] | None = None
        #: until when a file error means a tree release moving into place (transfer.MOVE_GRACE)
        self.moving_until = 0.0
        #: the tracker's last announce or scrape failed; when to announce next
        self.tracker_lost = False
        self.next_announce = time.monotonic() + REANNOUNCE_INTERVAL
        #: lab switches from --settings (keys starting EXPERIMENT_PREFIX), see transfer.SeederHold
        self.experiments: dict[str, Any] = {}
        #: progress reports to the tracker, when the control side asked for them
        self.reporter: Reporter | None = None
        report_id = getattr(args, "report_id", None)
        if report_id and meta.announce:
            self.reporter = Reporter(
                meta.announce, bytes.fromhex(meta.info_hash), report_id, args.bind
            )

    # -- status file ---------------------------------------------------

    def write_status(self, force: bool = False) -> None:
        """Replace the status file atomically, at most every STATUS_INTERVAL unless forced."""
        now = time.monotonic()
        if not force and now - self.written_at < STATUS_INTERVAL:
            return
        self.written_at = now
        self.status["updated_at"] = time.time()
        self.status["cpu_seconds"] = round(time.process_time(), 3)
        self.status["loop_cpu_seconds"] = round(time.thread_time(), 3)
        write_status(self.args.status_file, self.status)
        if self.reporter is not None:
            self.reporter.offer(self.status)

    def set_state(self, state: str, error: str | None = None) -> None:
        """Move to ``state`` and write the status file at once."""
        self.status["state"] = state
        if error is not None:
            self.status["error"] = error
        self.write_status(force=True)

    # -- libtorrent ----------------------------------------------------

    def open_session(self, save_path: str | None = None, ti: Any = None) -> None:
        """Start a session listening on ``--bind:--port`` and add the torrent.

        :param save_path: where the torrent's files are (default ``--save-path``).
        :param ti: the ``torrent_info`` to add (default: the torrent's, as read).
        """
        import libtorrent as lt

        args = self.args
        queues = {}
        if self.meta.lengths is not None:
            queues = profile.request_queues(self.meta.size, self.meta.lengths)
        peers = getattr(args, "peers", None)
        if self.role == "seed" and peers:
            name = "max_allowed_in_request_queue"
            depth = int(queues.get(name, profile.DATACENTER[name]))
            queues = {**queues, name: profile.seeder_queue(depth, peers)}
        # --settings (murder.libtorrent) still has the last word.
        overrides = {**queues, **profile.parse_overrides(args.settings)}
        # Lab switches of the agent itself ride the same JSON, never reaching libtorrent.
        for key in [k for k in overrides if k.startswith(EXPERIMENT_PREFIX)]:
            self.experiments[key] = overrides.pop(key)
        pack = profile.settings(args.bind, args.port, overrides)
        pack.update(
            profile.rate_limits(args.upload_rate_limit, getattr(args, "download_rate_limit", 0))
        )
        try:
            self.ses = lt.session(pack)  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            # Only --settings can name an unknown setting or a wrong type.
            raise ConfigError(f"invalid libtorrent setting in --settings: {exc}") from exc
        wake_on_signal(self)
        self.ses.set_peer_class_filter(profile.peer_class_filter())
        if args.allow:
            self.ses.set_ip_filter(profile.ip_filter(args.allow))
        self._wait_listening()
        params = lt.add_torrent_params()
        params.ti = ti if ti is not None else lt.torrent_info(self.meta.raw)
        params.save_path = os.path.abspath(save_path or args.save_path)
        # Never auto-managed: nothing may queue or pause our one torrent.
        params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        params.flags &= ~lt.torrent_flags.seed_mode
        self.handle = self.ses.add_torrent(params)

    def _wait_listening(self) -> None:
        import libtorrent as lt

        deadline = time.monotonic() + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            self.ses.wait_for_alert(ALERT_WAIT_MS)
            for alert in self.ses.pop_alerts():
                if isinstance(alert, lt.listen_succeeded_alert):
                    return
                if isinstance(alert, lt.listen_failed_alert):
                    raise MurderError(
                        f"cannot listen on {self.args.bind}:{self.args.port}: {alert.message()}"
                    )
        raise MurderError(f"libtorrent did not listen on {self.args.bind}:{self.args.port} in time")

    def pump(self, strict: bool = True) -> list[Any]:
        """Wait briefly for alerts, handle them, refresh the status and return them.

        Every alert passes through here, so no block or hash failure is missed
        while the agent waits for something in particular.

        :param strict: raise on a disk or torrent error (off while closing).
        """
        import libtorrent as lt

        self.ses.wait_for_alert(ALERT_WAIT_MS)
        alerts = self.ses.pop_alerts()
        for alert in alerts:
            if isinstance(alert, lt.block_downloading_alert):
                self.transfer.block_requested(alert.piece_index, alert.block_index, alert.ip[0])
            elif isinstance(alert, lt.block_finished_alert):
                self.transfer.block_received(alert.piece_index, alert.block_index, alert.ip[0])
            elif isinstance(alert, lt.piece_finished_alert):
                self.transfer.piece_checked(alert.piece_index, self.block_sizes(alert.piece_index))
            elif isinstance(alert, lt.hash_failed_alert):
                self.status["hash_failures"] += 1
                self.transfer.piece_checked(alert.piece_index, self.block_sizes(alert.piece_index))
            elif isinstance(alert, lt.file_error_alert | lt.torrent_error_alert):
                if time.monotonic() < self.moving_until:
                    # A read between a tree release's rename and the symlink that
                    # follows it: the data is whole, only its path moved.
                    print(f"while installing: {alert.message()}; resuming", flush=True)
                    self.handle.clear_error()
                    self.handle.resume()
                elif strict:
                    raise MurderError(f"disk or torrent error: {alert.message()}")
            elif isinstance(alert, lt.torrent_finished_alert):
                self.finished = True
            elif isinstance(alert, lt.cache_flushed_alert) and self.finished:
                self.flushes_after_finish += 1
            elif isinstance(alert, lt.scrape_reply_alert):
                self.scrape = (int(alert.incomplete), time.monotonic())
            elif isinstance(alert, lt.tracker_reply_alert):
                if self.tracker_lost:
                    print("tracker: answering again", flush=True)
                self.tracker_lost = False
            elif isinstance(alert, lt.tracker_error_alert | lt.scrape_failed_alert):
                if not self.tracker_lost:
                    print(f"tracker: {redact(alert.message())}", flush=True)
                self.tracker_lost = True
                self.next_announce = min(self.next_announce, time.monotonic() + REANNOUNCE_RETRY)
        self._reannounce()
        self.refresh()
        return alerts

    def _reannounce(self) -> None:
        """Announce again when due, so a restarted tracker (which keeps no state) is refilled.

        The tracker's own interval is long (it is sized for the steady state
        of a big fleet); libtorrent would not come back to a tracker that
        died between two announces until that interval ran out.
        """
        now = time.monotonic()
        if self.handle is None or now < self.next_announce or not self.handle.is_valid():
            return
        import libtorrent as lt  # loaded by open_session already: a dict lookup

        # Without ignore_min_interval, libtorrent obeys the tracker's "min interval"
        # (900 s by default) and this re-announce would not happen at all.
        self.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
        self.next_announce = now + (REANNOUNCE_RETRY if self.tracker_lost else REANNOUNCE_INTERVAL)

    def wait_alert(self, kinds: tuple[type, ...], timeout: float, strict: bool = True) -> Any:
        """Pump alerts until one of ``kinds`` arrives; return it, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.pump(strict):
                if isinstance(alert, kinds):
                    return alert
        return None

    def refresh(self) -> None:
        """Copy byte counters from libtorrent into the status, and write it if due."""
        if time.monotonic() - self.written_at < STATUS_INTERVAL:
            return
        seeder, peers = self.transfer.totals()
        self.status.update(from_seeder=seeder, from_peers=peers)
        # After remove_torrent (while closing) the handle no longer answers; it can
        # stop answering between is_valid() and status() (libtorrent raises then).
        st = None
        if self.handle is not None and self.handle.is_valid():
            try:
                st = self.handle.status()
            except RuntimeError:
                st = None
        if st is not None:
            self.status.update(
                done=int(st.total_wanted_done),
                uploaded=int(st.all_time_upload),
                peers=int(st.num_peers),
            )
        self.write_status()

    def block_sizes(self, piece: int) -> list[int]:
        """Return the sizes of the 16 KiB blocks of ``piece`` (the last may be short)."""
        length = self.meta.piece_length(piece)
        return [min(BLOCK_SIZE, length - start) for start in range(0, length, BLOCK_SIZE)]

    def checking(self) -> bool:
        """Return True while libtorrent still checks the data on disk."""
        import libtorrent as lt

        state = self.handle.status().state
        return state in (
            lt.torrent_status.states.checking_files,
            lt.torrent_status.states.checking_resume_data,
        )

    def complete(self) -> bool:
        """Return True once every piece is on disk and verified."""
        st = self.handle.status()
        return bool(st.is_seeding) or (
            st.total_wanted > 0 and st.total_wanted_done == st.total_wanted
        )

    def close(self) -> None:
        """Leave the swarm: announce ``stopped``, close the session, send the last report."""
        if self.ses is not None:
            import libtorrent as lt

            if self.handle is not None:
                self.ses.remove_torrent(self.handle)
                self.wait_alert((lt.torrent_removed_alert,), 3.0, strict=False)
                self.refresh_now()
            # Deleting the session waits (up to stop_tracker_timeout) for the stopped announce.
            self.ses = None
            self.handle = None
        if self.reporter is not None:
            self.reporter.close()

    def refresh_now(self) -> None:
        """Refresh the counters regardless of the write interval."""
        self.written_at = 0.0
        self.refresh()
