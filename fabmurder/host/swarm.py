"""``seed`` and ``peer``: the libtorrent agent on the seeder and on each peer, and its status file.

One process drives one libtorrent session with one torrent. It never
sleeps to synchronise: it waits on libtorrent's alerts with a deadline,
and between alerts it refreshes the status file (JSON, replaced atomically,
at most twice a second plus once per change of state) that the control side
polls. A peer downloads, checks the tarball's SHA-256 against the value
recorded at creation, extracts it atomically, then keeps seeding for the
others until the tracker reports no leecher left, ``--seed-after`` runs
out, or it is told to stop (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from fabmurder.errors import ArtifactError, ConfigError, MurderError
from fabmurder.host import artifact, metainfo, profile
from fabmurder.host.cli import EXIT_FAILED, EXIT_OK, fail, run
from fabmurder.host.daemon import notify_ready
from fabmurder.tags import validate_tag

STATES = (
    "starting",
    "checking",
    "downloading",
    "verifying",
    "extracting",
    "seeding",
    "failed",
    "stopped",
)
#: the status file is rewritten at most this often (plus on each change of state)
STATUS_INTERVAL = 0.5
#: how long one wait for alerts may block, so signals and deadlines are seen promptly
ALERT_WAIT_MS = 250
#: how often a finished peer asks the tracker whether anyone still downloads
SCRAPE_INTERVAL = 1.0
#: how long "no leechers" must hold before a finished peer leaves (see docs/tuning.md)
NO_LEECHER_HOLD = 1.5
#: how long a listen socket may take to open
LISTEN_TIMEOUT = 10.0
#: how long libtorrent may take to write out a finished download
FLUSH_TIMEOUT = 60.0

STATUS_FIELDS: dict[str, type | tuple[type, ...]] = {
    "role": str,
    "tag": str,
    "info_hash": str,
    "pid": int,
    "state": str,
    "installed": bool,
    "error": (str, type(None)),
    "total": int,
    "done": int,
    "uploaded": int,
    "from_seeder": int,
    "from_peers": int,
    "hash_failures": int,
    "peers": int,
    "started_at": (int, float),
    "downloaded_at": (int, float, type(None)),
    "installed_at": (int, float, type(None)),
    "updated_at": (int, float),
}


class StatusError(MurderError):
    """A status file is missing, malformed or not a fabmurder status."""


def parse_status(text: str | bytes) -> dict[str, Any]:
    """Parse and validate the text of a status file.

    :raises StatusError: if it is not a JSON object with every field of the right type.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(f"status file is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise StatusError("status file is not a JSON object")
    for key, kind in STATUS_FIELDS.items():
        if key not in obj:
            raise StatusError(f"status file lacks {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise StatusError(f"status field {key!r} has the wrong type")
    if obj["role"] not in ("seed", "peer"):
        raise StatusError(f"status role {obj['role']!r} is unknown")
    if obj["state"] not in STATES:
        raise StatusError(f"status state {obj['state']!r} is unknown")
    for key in ("total", "done", "uploaded", "from_seeder", "from_peers", "hash_failures", "peers"):
        if obj[key] < 0:
            raise StatusError(f"status field {key!r} is negative")
    return obj


def read_status(path: str) -> dict[str, Any]:
    """Read and validate the status file at ``path``.

    :raises StatusError: if it is unreadable or malformed.
    """
    try:
        with open(path, "rb") as fh:
            return parse_status(fh.read(1024 * 1024))
    except OSError as exc:
        raise StatusError(f"cannot read status file {path}: {exc.strerror}") from exc


#: libtorrent's request unit: every block is 16 KiB except a piece's last one
BLOCK_SIZE = 16 * 1024


@dataclass
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

    seeder: str | None
    from_seeder: int = 0
    from_peers: int = 0

    def __post_init__(self) -> None:
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


class _Stop:
    """Set by SIGTERM/SIGINT: the main loop sees it within one alert wait."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum: int, frame: Any) -> None:
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


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

    # -- status file ---------------------------------------------------

    def write_status(self, force: bool = False) -> None:
        """Replace the status file atomically, at most every STATUS_INTERVAL unless forced."""
        now = time.monotonic()
        if not force and now - self.written_at < STATUS_INTERVAL:
            return
        self.written_at = now
        self.status["updated_at"] = time.time()
        path = self.args.status_file
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.status, fh)
            os.rename(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def set_state(self, state: str, error: str | None = None) -> None:
        """Move to ``state`` and write the status file at once."""
        self.status["state"] = state
        if error is not None:
            self.status["error"] = error
        self.write_status(force=True)

    # -- libtorrent ----------------------------------------------------

    def open_session(self) -> None:
        """Start a session listening on ``--bind:--port`` and add the torrent."""
        import libtorrent as lt

        args = self.args
        pack = profile.settings(args.bind, args.port, profile.parse_overrides(args.settings))
        pack.update(
            profile.rate_limits(args.upload_rate_limit, getattr(args, "download_rate_limit", 0))
        )
        try:
            self.ses = lt.session(pack)  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            # Only --settings can name an unknown setting or a wrong type.
            raise ConfigError(f"invalid libtorrent setting in --settings: {exc}") from exc
        self.ses.set_peer_class_filter(profile.peer_class_filter())
        if args.allow:
            self.ses.set_ip_filter(profile.ip_filter(args.allow))
        self._wait_listening()
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(self.meta.raw)
        params.save_path = os.path.abspath(args.save_path)
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
                if strict:
                    raise MurderError(f"disk or torrent error: {alert.message()}")
            elif isinstance(alert, lt.torrent_finished_alert):
                self.finished = True
            elif isinstance(alert, lt.cache_flushed_alert) and self.finished:
                self.flushes_after_finish += 1
            elif isinstance(alert, lt.scrape_reply_alert):
                self.scrape = (int(alert.incomplete), time.monotonic())
            elif isinstance(alert, lt.tracker_error_alert | lt.scrape_failed_alert):
                print(f"tracker: {alert.message()}", flush=True)
        self.refresh()
        return alerts

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
        # After remove_torrent (while closing) the handle no longer answers.
        if self.handle is not None and self.handle.is_valid():
            st = self.handle.status()
            self.status.update(
                done=int(st.total_wanted_done),
                uploaded=int(st.all_time_upload),
                peers=int(st.num_peers),
            )
        self.write_status()

    def block_sizes(self, piece: int) -> list[int]:
        """Return the sizes of the 16 KiB blocks of ``piece`` (the last may be short)."""
        length = self.meta.piece_size
        if piece == self.meta.num_pieces - 1:
            length = self.meta.size - length * (self.meta.num_pieces - 1)
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
        """Leave the swarm gracefully: announce ``stopped`` and close the session."""
        if self.ses is None:
            return
        import libtorrent as lt

        if self.handle is not None:
            self.ses.remove_torrent(self.handle)
            self.wait_alert((lt.torrent_removed_alert,), 3.0, strict=False)
            self.refresh_now()
        # Deleting the session waits (up to stop_tracker_timeout) for the stopped announce.
        self.ses = None
        self.handle = None

    def refresh_now(self) -> None:
        """Refresh the counters regardless of the write interval."""
        self.written_at = 0.0
        self.refresh()


def seed(agent: Agent) -> int:
    """Serve the release until SIGTERM; fail if the data on disk does not match the torrent."""
    agent.set_state("checking")
    agent.open_session()
    while agent.checking() and not _Stop.requested:
        agent.pump()
    if not _Stop.requested and not agent.complete():
        st = agent.handle.status()
        missing = st.total_wanted - st.total_wanted_done
        raise ArtifactError(
            f"seed data in {agent.args.save_path} does not match the torrent: "
            f"{missing} of {st.total_wanted} bytes fail the piece hashes"
        )
    agent.status["downloaded_at"] = time.time()
    agent.set_state("seeding")
    notify_ready()
    while not _Stop.requested:
        agent.pump()
    agent.set_state("stopped")
    return EXIT_OK


def peer(agent: Agent) -> int:
    """Download, verify, install, then seed for the others until the swarm needs us no more."""
    args = agent.args
    final = os.path.join(args.dest, args.tag)
    if os.path.lexists(final) and not args.force:
        raise ArtifactError(f"destination {final} already exists; use --force to replace it")
    started = time.monotonic()
    deadline = started + args.timeout
    agent.set_state("checking")
    agent.open_session()
    notify_ready()
    while agent.checking() and not _Stop.requested:
        agent.pump()
        _check_deadline(agent, deadline)
    agent.set_state("downloading")
    while not agent.complete() and not _Stop.requested:
        agent.pump()
        _check_deadline(agent, deadline)
    if _Stop.requested:
        agent.set_state("stopped", error="stopped before the release was installed")
        return EXIT_FAILED
    agent.refresh_now()
    agent.status["downloaded_at"] = time.time()
    agent.set_state("verifying")
    _flush(agent)
    tarball = os.path.join(args.save_path, agent.meta.name)
    _verify(agent, tarball)
    agent.set_state("extracting")
    artifact.extract(tarball, args.dest, args.tag, force=args.force)
    agent.status["installed"] = True
    agent.status["installed_at"] = time.time()
    agent.set_state("seeding")
    _linger(agent, args.seed_after)
    agent.set_state("stopped")
    return EXIT_OK


def _check_deadline(agent: Agent, deadline: float) -> None:
    if time.monotonic() < deadline:
        return
    agent.refresh_now()
    total = agent.status["total"] or 1
    percent = 100.0 * agent.status["done"] / total
    raise MurderError(f"timed out after {agent.args.timeout:g}s at {percent:.1f}%")


def _flush(agent: Agent) -> None:
    """Wait until libtorrent has written every verified block to the tarball on disk.

    A piece passes its hash check from memory while its blocks may still be
    queued for writing (libtorrent 2's store buffer), so "complete" does not
    mean "on disk". ``flush_cache`` releases the files through a *fence* job
    that runs only after every disk job queued before it, and answers with a
    ``cache_flushed_alert``. Any such alert that follows ``torrent_finished``
    (libtorrent releases the files itself when a download finishes) is late
    enough; one from the start-up check is not, hence the counter.

    :raises MurderError: if libtorrent does not confirm the flush in time.
    """
    before = agent.flushes_after_finish
    agent.handle.flush_cache()
    deadline = time.monotonic() + FLUSH_TIMEOUT
    while agent.flushes_after_finish <= before:
        if time.monotonic() >= deadline:
            raise MurderError(f"libtorrent did not write the download out in {FLUSH_TIMEOUT:g}s")
        agent.pump()


def _verify(agent: Agent, tarball: str) -> None:
    """Check the tarball's SHA-256, once more after another flush if it does not match.

    The second look costs one more read only when something is wrong, and
    tells a write still in flight apart from a genuinely different artifact.
    """
    try:
        artifact.verify(tarball, agent.args.sha256)
    except ArtifactError as first:
        print(f"verification failed, flushing and checking again: {first}", flush=True)
        _flush(agent)
        artifact.verify(tarball, agent.args.sha256)


def _linger(agent: Agent, seed_after: float) -> None:
    """Keep seeding until no leecher is left for a short hold, ``seed_after`` passes, or SIGTERM."""
    deadline = time.monotonic() + seed_after
    agent.scrape = None
    next_scrape = time.monotonic()
    quiet_since: float | None = None
    while not _Stop.requested and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_scrape:
            agent.handle.scrape_tracker()
            next_scrape = now + SCRAPE_INTERVAL
        agent.pump()
        if agent.scrape is not None:
            leechers, _at = agent.scrape
            if leechers > 0:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            agent.scrape = None
        if quiet_since is not None and time.monotonic() - quiet_since >= NO_LEECHER_HOLD:
            return


def parser(role: str) -> argparse.ArgumentParser:
    """Return the argument parser for ``seed`` or ``peer``."""
    p = argparse.ArgumentParser(prog=f"fabmurder {role}", description=__doc__)
    p.add_argument("--torrent", required=True)
    p.add_argument("--save-path", required=True, help="directory that holds <tag>.tar")
    p.add_argument("--bind", required=True, help="the host's fleet address")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--status-file", required=True)
    p.add_argument(
        "--allow", action="append", default=[], help="CIDR or address allowed to connect"
    )
    p.add_argument("--upload-rate-limit", type=int, default=0)
    p.add_argument("--settings", default=None, help="libtorrent setting overrides as JSON")
    p.add_argument("--tag", required=role == "peer", default=None)
    if role == "peer":
        p.add_argument("--sha256", required=True)
        p.add_argument("--dest", required=True)
        p.add_argument("--timeout", required=True, type=float)
        p.add_argument("--seed-after", required=True, type=float)
        p.add_argument("--seeder", default=None, help="the seeder's address, to split byte counts")
        p.add_argument("--download-rate-limit", type=int, default=0)
        p.add_argument("--force", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Run ``seed`` or ``peer`` (the first element of ``argv``)."""
    if not argv or argv[0] not in ("seed", "peer"):
        fail("usage: python -m fabmurder {seed,peer} [options]")
        return 2
    role, rest = argv[0], argv[1:]

    def body(args: argparse.Namespace) -> int:
        if args.tag is not None:
            validate_tag(args.tag)
        meta = metainfo.read(args.torrent, tag=args.tag)
        profile.settings(args.bind, args.port, profile.parse_overrides(args.settings))
        _Stop.requested = False
        _Stop.install()
        agent = Agent(role, args, meta)
        agent.write_status(force=True)
        try:
            return seed(agent) if role == "seed" else peer(agent)
        except MurderError as exc:
            agent.set_state("failed", error=str(exc))
            raise
        except OSError as exc:
            agent.set_state(
                "failed", error=f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
            )
            raise MurderError(str(exc)) from exc
        finally:
            agent.close()

    return run(parser(role), rest, body)
