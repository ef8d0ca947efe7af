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
import os
import time

from fabmurder import contract
from fabmurder.errors import ArtifactError, ConfigError, MurderError
from fabmurder.host import artifact, metainfo, privatedir, profile, staging, tree
from fabmurder.host.agent import Agent, StopFlag
from fabmurder.host.cli import EXIT_FAILED, EXIT_OK, fail, raise_fd_limit, run
from fabmurder.host.daemon import notify_ready
from fabmurder.tags import validate_tag

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

#: how often a finished peer asks the tracker whether anyone still downloads
SCRAPE_INTERVAL = 1.0
#: how long "no leechers" must hold before a finished peer leaves (see docs/tuning.md)
NO_LEECHER_HOLD = 1.5
#: how long libtorrent may take to write out a finished download
FLUSH_TIMEOUT = 60.0
#: libtorrent piece priorities: a peer's own slice first, the rest as usual
STRIPE_PRIORITY = 7
DEFAULT_PRIORITY = 4
#: how long after a tree release's rename a file error is taken for the move (see Agent.pump)
MOVE_GRACE = 5.0


def seed(agent: Agent) -> int:
    """Serve the release until SIGTERM; fail if the data on disk does not match the torrent."""
    if agent.meta.manifest is not None:
        # A tree is served where it is, through create's <tag>.tree symlink.
        data = os.path.join(agent.args.save_path, contract.tree_link(agent.tag))
        if not os.path.isdir(data):
            raise ArtifactError(f"seed data {data} is missing", path=data)
        agent.set_state("checking")
        agent.open_session(ti=tree.served_from(agent.meta, contract.tree_link(agent.tag)))
    else:
        tarball = os.path.join(agent.args.save_path, agent.meta.name)
        if not os.path.isfile(tarball):
            raise ArtifactError(f"seed data {tarball} is missing", path=tarball)
        agent.set_state("checking")
        agent.open_session()
    while agent.checking() and not StopFlag.requested:
        agent.pump()
    if not StopFlag.requested and not agent.complete():
        st = agent.handle.status()
        missing = st.total_wanted - st.total_wanted_done
        raise ArtifactError(
            f"seed data in {agent.args.save_path} does not match the torrent: "
            f"{missing} of {st.total_wanted} bytes fail the piece hashes"
        )
    agent.status["downloaded_at"] = time.time()
    agent.set_state("seeding")
    notify_ready()
    while not StopFlag.requested:
        agent.pump()
    agent.set_state("stopped")
    return EXIT_OK


def peer(agent: Agent) -> int:
    """Download, verify, install, then seed for the others until the swarm needs us no more."""
    args = agent.args
    final = os.path.join(args.dest, args.tag)
    if os.path.lexists(final) and not args.force:
        recorded = artifact.installed_sha256(args.dest, args.tag)
        if recorded == args.sha256.strip().lower():
            # A rerun: this very artifact is already in place, nothing to fetch.
            agent.status.update(installed=True, installed_at=time.time(), done=agent.meta.size)
            agent.set_state("stopped")
            notify_ready()
            return EXIT_OK
        what = (
            f"it holds another release, sha256 {recorded[:12]}..."
            if recorded
            else "it was not installed by fabmurder"
        )
        raise ArtifactError(
            f"destination {final} already exists; use --force to replace it ({what})"
        )
    deadline = Deadline(args.timeout, args.first_byte_wait)
    privatedir.ensure(args.save_path)
    stage = _stage(agent) if agent.meta.manifest is not None else None
    try:
        return _fetch(agent, stage, deadline)
    finally:
        if stage is not None:
            # Only the symlink left in it once installed (libtorrent served through it).
            stage.discard()


def _stage(agent: Agent) -> staging.Stage:
    """Check a tree release's digest and stage it, filled from the releases already here."""
    args = agent.args
    expected = args.sha256.strip().lower()
    if agent.meta.digest != expected:
        raise ArtifactError(
            f"the torrent's manifest has digest {agent.meta.digest}, not the {expected} "
            "the control side recorded"
        )
    meta = agent.meta
    assert meta.manifest is not None and meta.packed_manifest is not None
    agent.set_state("checking")
    stage = staging.begin(args.dest, args.tag, meta.manifest, meta.packed_manifest, expected)
    agent.status.update(
        reused=stage.reused.bytes,
        reused_files=stage.reused.files,
        reused_by_path=stage.reused.by_path,
    )
    return stage


def _fetch(agent: Agent, stage: staging.Stage | None, deadline: Deadline) -> int:
    """Download the release (into the stage, or the tarball), install it, then seed."""
    args = agent.args
    if stage is None:
        artifact.claim_download(os.path.join(args.save_path, agent.meta.name))
    agent.set_state("checking")
    agent.open_session(save_path=stage.partial if stage is not None else None)
    notify_ready()
    while agent.checking() and not StopFlag.requested:
        agent.pump()
        deadline.check(agent)
    if args.stripe:
        missing = None
        if stage is not None:
            import libtorrent as lt  # loaded by open_session already

            # Only the pieces no local release held are asked for: stripe those.
            have = agent.handle.status(lt.status_flags_t.query_pieces).pieces
            missing = [i for i, got in enumerate(have) if not got]
        priorities = stripe_priorities(
            agent.meta.num_pieces, *args.stripe, missing=missing, lengths=agent.meta.lengths
        )
        agent.handle.prioritize_pieces(priorities)
    # Only for a delta: a peer that reused nothing needs every piece, the seeder's too.
    delta = bool(args.stripe) and stage is not None and stage.reused.bytes > 0
    hold = SeederHold.start(agent, priorities if delta else None)
    agent.set_state("downloading")
    # torrent_finished_alert first: polling handle.status() is a blocking call into
    # the network thread, so it is asked only once the download says it is done.
    while not (agent.finished and agent.complete()) and not StopFlag.requested:
        alerts = agent.pump()
        if hold is not None:
            hold.step(agent, alerts)
        deadline.check(agent)
    if StopFlag.requested:
        agent.set_state("stopped", error="stopped before the release was installed")
        return EXIT_FAILED
    agent.refresh_now()
    agent.status["downloaded_at"] = time.time()
    agent.set_state("verifying")
    _flush(agent)
    if stage is not None:
        # libtorrent may read a piece while the tree moves: a file error then is no failure.
        agent.moving_until = time.monotonic() + MOVE_GRACE
        staging.complete(stage, force=args.force)
    else:
        tarball = os.path.join(args.save_path, agent.meta.name)
        with _open_verified(agent, tarball) as verified:
            agent.set_state("extracting")
            artifact.extract(verified, args.dest, args.tag, force=args.force, sha256=args.sha256)
    agent.status["installed"] = True
    agent.status["installed_at"] = time.time()
    agent.set_state("seeding")
    _linger(agent, args.seed_after)
    agent.set_state("stopped")
    return EXIT_OK


def stripe_priorities(
    num_pieces: int,
    index: int,
    count: int,
    *,
    missing: list[int] | None = None,
    lengths: list[int] | None = None,
) -> list[int]:
    """Return piece priorities that put peer ``index`` of ``count``'s own slice first.

    At the start only the seeder holds anything, and peers that pick the
    same pieces from it make it send those pieces twice. Given the top
    priority for one slice each, the peers ask the seeder for different
    pieces first and fetch the rest from each other (rarest first), so the
    seeder sends each piece about once.

    :param missing: the pieces still to fetch, when the peer holds some
        already (a tree release filled from older ones): the slices are cut
        from these, or a small change would fall in one peer's slice, and
        every peer would ask the seeder for the same pieces.
    :param lengths: each piece's payload bytes, when pieces differ in size
        (a tree release's pieces end with their files): the slices are cut
        to equal bytes, not equal counts, or a peer whose slice holds the
        small files is done with the seeder early and the large files'
        slices are the last to spread.
    """
    wanted = list(range(num_pieces)) if missing is None else missing
    priorities = [DEFAULT_PRIORITY] * num_pieces
    if lengths is None:
        low = len(wanted) * index // count
        high = len(wanted) * (index + 1) // count
        for piece in wanted[low:high]:
            priorities[piece] = STRIPE_PRIORITY
        return priorities
    total = sum(lengths[p] for p in wanted) or 1
    before = 0
    for piece in wanted:
        # a piece belongs to the slice its middle byte falls in
        if (2 * before + lengths[piece]) * count // (2 * total) == index:
            priorities[piece] = STRIPE_PRIORITY
        before += lengths[piece]
    return priorities


class SeederHold:
    """Lab switch (off unless ``fabmurder_seeder_hold`` is in --settings): spare the seeder.

    For a peer that reused part of the release. A delta's pieces are few,
    and every peer asks the seeder for all of them at once. Held: a peer
    asks for its own stripe only; once that is
    in (or ``fabmurder_seeder_hold`` seconds passed), it asks for the rest
    with the seeder's connection slowed to ``fabmurder_seeder_rate`` bytes
    per second (a peer class of its own), so the others' stripes come from
    the others; ``fabmurder_seeder_grace`` seconds later the limit goes,
    so a dead stripe owner stops no one. Measured in docs/delta.md.
    """

    def __init__(self, priorities: list[int], stripe: set[int], seconds: float) -> None:
        self.priorities = priorities
        self.stripe = stripe
        self.released_at: float | None = None
        self.hold_until = time.monotonic() + seconds
        self.grace = 3.0
        self.rate = 16 * 1024
        self.seeder_class: int | None = None

    @classmethod
    def start(cls, agent: Agent, priorities: list[int] | None) -> SeederHold | None:
        seconds = agent.experiments.get("fabmurder_seeder_hold")
        seeder = agent.args.seeder
        if not seconds or priorities is None or not seeder:
            return None
        stripe = {p for p, prio in enumerate(priorities) if prio == STRIPE_PRIORITY}
        hold = cls(list(priorities), stripe, float(seconds))
        hold.grace = float(agent.experiments.get("fabmurder_seeder_grace", hold.grace))
        hold.rate = int(agent.experiments.get("fabmurder_seeder_rate", hold.rate))
        agent.handle.prioritize_pieces(
            [STRIPE_PRIORITY if p in stripe else 0 for p in range(len(priorities))]
        )
        return hold

    def step(self, agent: Agent, alerts: list[Any]) -> None:
        import libtorrent as lt  # loaded by open_session already

        now = time.monotonic()
        for alert in alerts:
            if isinstance(alert, lt.piece_finished_alert):
                self.stripe.discard(int(alert.piece_index))
        if self.released_at is None and (not self.stripe or now >= self.hold_until):
            self.released_at = now
            ses = agent.ses
            self.seeder_class = ses.create_peer_class("seeder")
            ses.set_peer_class(
                self.seeder_class,
                {"label": "seeder", "download_limit": self.rate, "connection_limit_factor": 100},
            )
            filt = profile.peer_class_filter()
            filt.add_rule(agent.args.seeder, agent.args.seeder, 1 << self.seeder_class)
            ses.set_peer_class_filter(filt)
            agent.handle.prioritize_pieces(self.priorities)
        elif (
            self.seeder_class is not None
            and self.released_at is not None
            and now >= self.released_at + self.grace
        ):
            agent.ses.set_peer_class(
                self.seeder_class,
                {"label": "seeder", "download_limit": 0, "connection_limit_factor": 100},
            )
            self.seeder_class = None


def parse_stripe(text: str) -> tuple[int, int]:
    """Parse ``--stripe INDEX/COUNT`` (0 <= INDEX < COUNT)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--stripe {text!r} is not INDEX/COUNT") from exc
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--stripe {text!r}: need 0 <= INDEX < COUNT")
    return index, count


class Deadline:
    """The agent's ``--timeout``, counted from the first byte it receives.

    The control side starts every peer before the seeder, so in a fleet of
    thousands the first peers wait minutes for the start phase to end. The
    wait for the first byte (from the seeder or a peer) has its own bound,
    ``--first-byte-wait`` (which the control side scales with the number of
    peers; ``--timeout`` when not given), and the timeout proper starts
    when that byte arrives: a large fleet fails no healthy peer, and a dead
    seeder still fails every peer within a bound.
    """

    def __init__(self, timeout: float, first_byte_wait: float | None = None) -> None:
        self.timeout = timeout
        self.waited = timeout if first_byte_wait is None else first_byte_wait
        self.at = time.monotonic() + self.waited
        self.restarted = False
        self.looked_at = 0.0

    def received(self, agent: Agent) -> bool:
        """Return True once any payload byte came from the network (asked once a second).

        libtorrent's session counter, not the agent's tally: the tally credits
        bytes per verified piece, and a slow first piece may take long to
        verify. Bytes a tree release found on disk are not payload.
        """
        now = time.monotonic()
        if agent.handle is None or now - self.looked_at < 1.0:
            return False
        self.looked_at = now
        return int(agent.handle.status().total_payload_download) > 0

    def check(self, agent: Agent) -> None:
        """Raise MurderError once the deadline has passed (restarted at the first byte)."""
        if not self.restarted and self.received(agent):
            self.restarted = True
            self.at = time.monotonic() + self.timeout
        if time.monotonic() < self.at:
            return
        agent.refresh_now()
        total = agent.status["total"] or 1
        percent = 100.0 * agent.status["done"] / total
        took = self.timeout if self.restarted else self.waited
        raise MurderError(f"timed out after {took:g}s at {percent:.1f}%")


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


def _open_verified(agent: Agent, tarball: str) -> IO[bytes]:
    """Open the tarball and check its SHA-256, once more after another flush if it does not match.

    The second look costs one more read only when something is wrong, and
    tells a write still in flight apart from a genuinely different artifact.
    The open file is what gets extracted, so a swap of the path after the
    check changes nothing.
    """
    try:
        return artifact.open_verified(tarball, agent.args.sha256)
    except ArtifactError as first:
        print(f"verification failed, flushing and checking again: {first}", flush=True)
        _flush(agent)
        return artifact.open_verified(tarball, agent.args.sha256)


def _linger(agent: Agent, seed_after: float) -> None:
    """Keep seeding until no leecher is left for a short hold, ``seed_after`` passes, or SIGTERM."""
    deadline = time.monotonic() + seed_after
    agent.scrape = None
    next_scrape = time.monotonic()
    quiet_since: float | None = None
    while not StopFlag.requested and time.monotonic() < deadline:
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
    p.add_argument(
        "--allow-file", help="more --allow entries, one per line (a private file of ours)"
    )
    p.add_argument("--upload-rate-limit", type=int, default=0)
    p.add_argument("--settings", default=None, help="libtorrent setting overrides as JSON")
    p.add_argument("--tag", required=role == "peer", default=None)
    p.add_argument(
        "--report-id",
        default=None,
        help="report progress to the tracker under this id (letters, digits, '-')",
    )
    if role == "seed":
        p.add_argument(
            "--peers",
            type=int,
            default=None,
            help="the swarm's peer count: sizes the seeder's request queue (profile.seeder_queue)",
        )
    if role == "peer":
        p.add_argument("--sha256", required=True)
        p.add_argument("--dest", required=True)
        p.add_argument("--timeout", required=True, type=float)
        p.add_argument(
            "--first-byte-wait",
            type=float,
            default=None,
            help="seconds to wait for the first byte, before --timeout starts (default: it)",
        )
        p.add_argument("--seed-after", required=True, type=float)
        p.add_argument("--seeder", default=None, help="the seeder's address, to split byte counts")
        p.add_argument("--download-rate-limit", type=int, default=0)
        p.add_argument("--force", action="store_true")
        p.add_argument(
            "--stripe",
            type=parse_stripe,
            default=None,
            help="INDEX/COUNT: fetch slice INDEX of COUNT first (see stripe_priorities)",
        )
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
        if args.report_id is not None and not contract.valid_report_id(args.report_id):
            raise ConfigError("--report-id must be 1-64 letters, digits or '-'", key="report_id")
        if args.allow_file:
            # the swarm's list travels as a file: no command line grows with the fleet
            listed = privatedir.read_private(args.allow_file, max_bytes=16 * 1024 * 1024)
            args.allow = [*args.allow, *listed.split()]
        meta = metainfo.read(args.torrent, tag=args.tag)
        pack = profile.settings(args.bind, args.port, profile.parse_overrides(args.settings))
        # libtorrent keeps about 0.8 x (soft limit - 20) connections: let it reach its own cap.
        raise_fd_limit(int(pack["connections_limit"]) * 5 // 4 + 64)
        StopFlag.requested = False
        StopFlag.install()
        try:
            privatedir.ensure(os.path.dirname(os.path.abspath(args.status_file)))
        except OSError as exc:
            raise MurderError(f"cannot create the status file's directory: {exc}") from exc
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
