"""Creating torrent files for a release and reading them back with suspicion.

A tarball release torrent is a v1, single-file torrent whose one file is
``<tag>.tar``. v1 keeps it readable by every client we test against
(aria2c, bencode.py); the tarball's SHA-256, checked after download, covers
what SHA-1 piece hashes do not. A tree release's torrent is a v2-only one
(v1 beyond 2,048 files, or for one file) with its manifest inside (created
and read by :mod:`fabmurder.host.tree`, which :func:`parse` hands it to).
Reading never lets a libtorrent exception escape: anything malformed or
unexpected is a :class:`TorrentError` with a sentence a human can act on.
"""

from __future__ import annotations

import os

from fabmurder.errors import TorrentError
from fabmurder.host.atomic import replace_file
from fabmurder.host.manifest import digest as manifest_digest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: 256 KiB: the lab's sweet spot was 64-256 KiB (1 MiB and more got slower)
DEFAULT_PIECE_SIZE = 256 * 1024
#: the default halves from DEFAULT_PIECE_SIZE down to this for many peers (see default_piece_size)
SMALLEST_DEFAULT_PIECE_SIZE = 64 * 1024
#: pieces the default aims to give each peer's first-pass slice
PIECES_PER_PEER = 64
MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 16 * 1024 * 1024
#: a release torrent is a few KiB per GiB; anything larger is not ours
MAX_TORRENT_BYTES = 16 * 1024 * 1024
#: the key of a tree release's manifest inside the torrent's info dictionary
MANIFEST_KEY = b"fabmurder manifest"


class Metainfo:
    """The facts about a release torrent that the agent relies on (a plain class, see Packed)."""

    __slots__ = (
        "info_hash",
        "name",
        "size",
        "piece_size",
        "num_pieces",
        "announce",
        "raw",
        "manifest",
        "digest",
        "packed_manifest",
        "lengths",
    )

    def __init__(
        self,
        info_hash: str,
        name: str,
        size: int,
        piece_size: int,
        num_pieces: int,
        announce: str | None,
        raw: bytes,
        manifest: dict[str, Any] | None = None,
        lengths: list[int] | None = None,
        digest: str | None = None,
        packed_manifest: bytes | None = None,
    ) -> None:
        self.info_hash = info_hash
        self.name = name
        self.size = size
        self.piece_size = piece_size
        self.num_pieces = num_pieces
        self.announce = announce
        self.raw = raw
        #: a tree release's manifest (see :mod:`fabmurder.host.tree`), None for a tarball
        self.manifest = manifest
        #: the release digest the control side compares: the manifest's, or None for a tarball
        if digest is None and manifest is not None:
            digest = manifest_digest(manifest)
        self.digest = digest
        #: the manifest as it rode in the torrent (deflated canonical bytes), for a tree
        self.packed_manifest = packed_manifest
        #: payload bytes of each piece, when pieces are not all piece_size (pad files)
        self.lengths = lengths

    def piece_length(self, piece: int) -> int:
        """Return the payload bytes of ``piece`` (pad bytes are never sent)."""
        if self.lengths is not None:
            return self.lengths[piece]
        if piece == self.num_pieces - 1:
            return self.size - self.piece_size * (self.num_pieces - 1)
        return self.piece_size


def default_piece_size(size: int, peers: int = 1) -> int:
    """Return the piece size for a ``size``-byte release sent to ``peers`` peers.

    256 KiB, halved (down to 64 KiB) while each peer's slice of the striped
    first pass would hold fewer than PIECES_PER_PEER pieces: the seeder then
    sends each piece about once (64 MiB to 16 peers: 1.11 x S with 64 KiB
    pieces against 1.19-1.23 x S with 256 KiB, measured in the run of commit 237b4b3).
    """
    piece = DEFAULT_PIECE_SIZE
    while piece > SMALLEST_DEFAULT_PIECE_SIZE and size < piece * max(1, peers) * PIECES_PER_PEER:
        piece //= 2
    return piece


def check_piece_size(piece_size: int) -> int:
    """Return ``piece_size`` if it is a power of two between 16 KiB and 16 MiB.

    :raises TorrentError: otherwise.
    """
    if (
        not isinstance(piece_size, int)
        or piece_size < MIN_PIECE_SIZE
        or piece_size > MAX_PIECE_SIZE
        or piece_size & (piece_size - 1)
    ):
        raise TorrentError(
            f"piece size {piece_size!r} must be a power of two between "
            f"{MIN_PIECE_SIZE} and {MAX_PIECE_SIZE} bytes"
        )
    return piece_size


def create(
    tarball: str, torrent_path: str, announce: str, piece_size: int = DEFAULT_PIECE_SIZE
) -> Metainfo:
    """Hash ``tarball`` into a v1 single-file torrent written atomically to ``torrent_path``.

    :raises TorrentError: on a bad piece size or announce URL, or a missing tarball.
    """
    import libtorrent as lt

    check_piece_size(piece_size)
    if not announce.startswith(("http://", "https://")):
        raise TorrentError(f"announce URL {announce!r} must be http:// or https://")
    if not os.path.isfile(tarball):
        raise TorrentError(f"cannot create a torrent: {tarball} is not a file")
    tarball = os.path.abspath(tarball)
    files = lt.list_files(tarball)
    creator = lt.create_torrent(files, piece_size, flags=lt.create_torrent.v1_only)
    creator.add_tracker(announce)
    creator.set_creator("fabmurder")
    # Private (BEP 27): peers come from the deploy's tracker only, never from
    # DHT, PEX or local discovery, so the swarm is the deploy's hosts.
    creator.set_priv(True)
    # Paths in the torrent are relative to the tarball's parent directory.
    lt.set_piece_hashes(creator, os.path.dirname(tarball))
    data = lt.bencode(creator.generate())
    replace_file(torrent_path, data, fsync=True)
    return parse(data)


def get(d: dict[bytes, Any], key: bytes, kind: type | tuple[type, ...], what: str) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TorrentError(f"malformed torrent: {what} is missing or has the wrong type")
    return value


def name_of(info: dict[bytes, Any]) -> str:
    """Return the torrent's ``info.name`` if it is one safe file name.

    :raises TorrentError: otherwise.
    """
    name_raw = get(info, b"name", bytes, "'info.name'")
    try:
        name = str(name_raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TorrentError("malformed torrent: 'info.name' is not UTF-8") from exc
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise TorrentError(f"malformed torrent: unsafe file name {name!r}")
    return name


def announce_of(top: dict[bytes, Any]) -> str | None:
    """Return the torrent's announce URL, or None."""
    raw = top.get(b"announce")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None


def parse(data: bytes) -> Metainfo:
    """Parse and validate the bytes of a release torrent.

    :raises TorrentError: if the data is not a well-formed v1 single-file torrent.
    """
    import libtorrent as lt

    if not isinstance(data, bytes | bytearray):
        raise TorrentError("malformed torrent: not bytes")
    if len(data) > MAX_TORRENT_BYTES:
        raise TorrentError(f"malformed torrent: {len(data)} bytes is too large")
    try:
        top: Any = lt.bdecode(bytes(data))
    except Exception as exc:  # libtorrent raises RuntimeError; be safe
        raise TorrentError(f"malformed torrent: not valid bencoding ({exc})") from exc
    if not isinstance(top, dict):
        raise TorrentError("malformed torrent: the top level is not a dictionary")
    info = get(top, b"info", dict, "'info'")
    if MANIFEST_KEY in info:
        from fabmurder.host import tree

        return tree.parse(top, info, bytes(data))
    name = name_of(info)
    if b"meta version" in info or b"file tree" in info:
        raise TorrentError("malformed torrent: a release torrent must be v1 only")
    if b"files" in info:
        raise TorrentError("malformed torrent: a release torrent holds exactly one file")
    length = get(info, b"length", int, "'info.length'")
    piece_size = get(info, b"piece length", int, "'info.piece length'")
    pieces = get(info, b"pieces", bytes, "'info.pieces'")
    if length <= 0:
        raise TorrentError(f"malformed torrent: length {length} is not positive")
    try:
        check_piece_size(piece_size)
    except TorrentError as exc:
        raise TorrentError(f"malformed torrent: {exc}") from exc
    expected_pieces = -(-length // piece_size)
    if len(pieces) != 20 * expected_pieces:
        raise TorrentError(
            f"malformed torrent: {len(pieces) // 20} piece hashes for {expected_pieces} pieces"
        )
    announce = announce_of(top)
    try:
        ti = lt.torrent_info(bytes(data))
    except Exception as exc:
        raise TorrentError(f"malformed torrent: {exc}") from exc
    hashes = ti.info_hashes()
    if not hashes.has_v1() or hashes.has_v2():
        raise TorrentError("malformed torrent: a release torrent must be v1 only")
    return Metainfo(
        info_hash=str(hashes.v1),
        name=name,
        size=length,
        piece_size=piece_size,
        num_pieces=expected_pieces,
        announce=announce,
        raw=bytes(data),
    )


def read(path: str, *, tag: str | None = None, info_hash: str | None = None) -> Metainfo:
    """Read the torrent at ``path`` and check it is the release we expect.

    :param tag: if given, the torrent's file must be ``<tag>.tar``.
    :param info_hash: if given, the v1 info-hash must match (40 hex digits).
    :raises TorrentError: if the file is unreadable, malformed or mismatched.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_TORRENT_BYTES + 1)
    except OSError as exc:
        raise TorrentError(f"cannot read torrent {path}: {exc.strerror}") from exc
    try:
        meta = parse(data)
    except TorrentError as exc:
        raise TorrentError(f"{path}: {exc}") from exc
    if tag is not None and meta.name != (tag if meta.manifest is not None else f"{tag}.tar"):
        raise TorrentError(
            f"{path}: torrent is for {meta.name!r}, not release {tag!r}", info_hash=meta.info_hash
        )
    if info_hash is not None and meta.info_hash != info_hash.lower():
        raise TorrentError(
            f"{path}: info-hash {meta.info_hash} does not match {info_hash}",
            info_hash=meta.info_hash,
        )
    return meta
