"""A tree release's torrent: a torrent of its files, manifest inside; v2 (BEP 52) up to 2,048 files.

BEP 52 aligns every file to a piece boundary and gives it a merkle
``pieces root``, so a file has the same root (and the same pieces) in every
release that holds it: a peer can fill a new release from its old ones,
and libtorrent's check tells which pieces are already right.

The v2 torrent is v2 only, not hybrid. A hybrid torrent's v1 half pads every file to a
whole piece, and libtorrent asks for whole 16 KiB blocks, so the pad bytes
in a file's last block crossed the wire: 500 files of 1-8 KiB (2.3 MB)
moved 8.2 MB (one full block per file, measured on loopback with
libtorrent 2.1.1). In a v2-only torrent a file's last piece ends with the
file, and the same files moved 2.3 MB. The clients a hybrid torrent would
have kept (aria2c 1.36, transmission 3.00) could not join a hybrid swarm
either. The tracker, the allow-list and the control side use the v2
info-hash truncated to 20 bytes, as BEP 52 has trackers do (a v1 tree's
info-hash as it is).

A tree of more than :data:`V2_MAX_FILES` files, or of one, is a v1 torrent,
its files end to end with no padding. libtorrent 2.1's v2 hash picker
walks every file of the torrent on every piece and HAVE message it
handles, so its cost grows with files times pieces: 30,000 files of
1-8 KiB (138 MB) from one seeder to one peer on loopback took 16.4-16.8
CPU seconds on the peer and 21.2-21.8 on the seeder as v2, 1.7-2.0 and
1.5-1.9 as v1 (libtorrent 2.1.1, ``docs/lab/lt_many_files.py``, twice
each in alternation; docs/delta.md). Its manifest's roots are hashed here,
as the peers hash them again after the download. What a v1 tree gives up:
a piece may hold the ends of several files, so a changed small file
costs the pieces it overlaps (a piece or two), not its own bytes. The
fill from old releases is file by file in both, so an unchanged, moved or
renamed file costs nothing in either.

The torrent's name is the tag and its files are the manifest's non-empty
files (``<tag>/<path>``); the manifest (:mod:`fabmurder.host.manifest`)
rides in the info dictionary under :data:`~fabmurder.host.metainfo.MANIFEST_KEY`,
so the info-hash covers it too. :func:`parse` checks that the two agree,
file for file, before anything is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from fabmurder.errors import ArtifactError, TorrentError
from fabmurder.host import manifest, metainfo
from fabmurder.host.atomic import replace_file

#: a tree of more non-empty files than this ships as a v1 torrent (see above)
V2_MAX_FILES = 2048

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def create(
    src: str, torrent_path: str, tag: str, announce: str, piece_size: int
) -> tuple[metainfo.Metainfo, dict[str, Any]]:
    """Hash the tree ``src`` into a torrent written atomically to ``torrent_path``.

    Returns the parsed torrent and the manifest. For a v2 torrent libtorrent
    computes every file's root while it hashes the pieces, and the manifest
    takes them from it; for a v1 one (more than V2_MAX_FILES files, or one
    file) the roots are hashed here.

    :raises ArtifactError: if the tree holds something a manifest refuses,
        or no non-empty file.
    :raises TorrentError: on a bad piece size or announce URL.
    """
    import libtorrent as lt

    metainfo.check_piece_size(piece_size)
    if not announce.startswith(("http://", "https://")):
        raise TorrentError(f"announce URL {announce!r} must be http:// or https://")
    src = os.path.realpath(src)
    tree = manifest.scan(src, hash_files=False)
    entries = manifest.files(tree)
    if not entries:
        raise ArtifactError(f"{src} holds no non-empty file to ship as a tree", path=src)
    # libtorrent reads a v2 torrent of one file as a single-file torrent named
    # after that file, not <tag>/<path>: one file goes as v1, which keeps the
    # directory (nothing to align, nor a hash picker to walk, in one file).
    v2 = 1 < len(entries) <= V2_MAX_FILES
    files = [lt.create_file_entry(f"{tag}/{e['path']}", e["size"]) for e in entries]
    flags = lt.create_torrent.v2_only if v2 else lt.create_torrent.v1_only
    creator = lt.create_torrent(files, piece_size, flags)
    creator.add_tracker(announce)
    creator.set_creator("fabmurder")
    creator.set_priv(True)
    # libtorrent reads <base>/<tag>/<path>: a private directory with one symlink
    # named <tag> to the tree gives it that view without copying anything.
    out_dir = os.path.dirname(os.path.abspath(torrent_path))
    base = tempfile.mkdtemp(dir=out_dir, prefix=f".{tag}.hash-")
    try:
        os.symlink(src, os.path.join(base, tag))
        lt.set_piece_hashes(creator, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    generated = creator.generate()
    if v2:
        roots = _roots(lt.torrent_info(lt.bencode(generated)), tag)
        for e in entries:
            e["root"] = roots[e["path"]][1]
    else:
        for e in entries:
            e["root"] = manifest.merkle_root(os.path.join(src, e["path"]))
    # What the peers will refuse is refused here already, with the same sentence.
    manifest.validate(tree)
    generated[b"info"][metainfo.MANIFEST_KEY] = manifest.pack(tree)
    data = lt.bencode(generated)
    replace_file(torrent_path, data, fsync=True)
    return parse_bytes(data), tree


def _roots(ti: Any, name: str, v2: bool = True) -> dict[str, tuple[int, str | None]]:
    """Return ``{path: (size, root hex)}`` of the torrent's real files (pads left out).

    A v1 torrent carries no roots: each is None.
    """
    layout = ti.layout()
    prefix = name + "/"
    out: dict[str, tuple[int, str | None]] = {}
    for i in range(layout.num_files()):
        if layout.file_flags(i) & (layout.flag_pad_file | layout.flag_symlink):
            if layout.file_flags(i) & layout.flag_symlink:
                raise TorrentError("malformed torrent: a tree torrent carries no symlinks")
            continue
        path = layout.file_path(i).replace(os.sep, "/")
        if not path.startswith(prefix):
            raise TorrentError(f"malformed torrent: file {path!r} is outside {name!r}")
        root = str(layout.root(i)) if v2 else None
        out[path[len(prefix) :]] = (int(layout.file_size(i)), root)
    return out


def parse_bytes(data: bytes) -> metainfo.Metainfo:
    """Parse a tree torrent's bytes (as :func:`fabmurder.host.metainfo.parse` does)."""
    meta = metainfo.parse(data)
    if meta.manifest is None:
        raise TorrentError("malformed torrent: not a tree release")
    return meta


def parse(top: dict[bytes, Any], info: dict[bytes, Any], data: bytes) -> metainfo.Metainfo:
    """Check a decoded tree torrent and its manifest against each other; return its facts.

    A v2 torrent's roots must be the manifest's; a v1 torrent carries none,
    and its files' roots are checked when the tree is scanned after the
    download, as a v2 tree's are.

    :raises TorrentError: if the torrent is hybrid, the manifest is hostile
        or malformed, or the two disagree on any file.
    """
    import libtorrent as lt

    name = metainfo.name_of(info)
    blob = metainfo.get(info, metainfo.MANIFEST_KEY, bytes, "the manifest")
    try:
        tree, digest = manifest.unpack_digest(blob)
    except ArtifactError as exc:
        raise TorrentError(f"malformed torrent: {exc}") from exc
    piece_size = metainfo.get(info, b"piece length", int, "'info.piece length'")
    try:
        metainfo.check_piece_size(piece_size)
        ti = lt.torrent_info(data)
    except TorrentError as exc:
        raise TorrentError(f"malformed torrent: {exc}") from exc
    except Exception as exc:  # libtorrent raises RuntimeError
        raise TorrentError(f"malformed torrent: {exc}") from exc
    hashes = ti.info_hashes()
    if hashes.has_v1() == hashes.has_v2():
        raise TorrentError("malformed torrent: a tree release torrent must be v1 or v2, not both")
    v2 = hashes.has_v2()
    carried = _roots(ti, name, v2)
    listed = {e["path"]: (e["size"], e["root"] if v2 else None) for e in manifest.files(tree)}
    if carried != listed:
        odd = sorted(set(carried.items()) ^ set(listed.items()))[0][0]
        raise TorrentError(f"malformed torrent: the manifest and the torrent disagree on {odd!r}")
    return metainfo.Metainfo(
        info_hash=truncated(hashes.v2) if v2 else str(hashes.v1),
        name=name,
        size=sum(size for size, _root in listed.values()),
        piece_size=piece_size,
        num_pieces=ti.num_pieces(),
        announce=metainfo.announce_of(top),
        raw=data,
        manifest=tree,
        lengths=_payload_lengths(ti),
        digest=digest,
        packed_manifest=blob,
    )


def truncated(v2: Any) -> str:
    """Return a v2 info-hash as trackers see it: its first 20 bytes, in 40 hex digits."""
    return str(v2)[:40]


def _payload_lengths(ti: Any) -> list[int]:
    """Return each piece's payload bytes: its size less the pad bytes inside it."""
    layout = ti.layout()
    lengths = [int(ti.piece_size(p)) for p in range(ti.num_pieces())]
    for i in range(layout.num_files()):
        if layout.file_flags(i) & layout.flag_pad_file:
            offset, size = int(layout.file_offset(i)), int(layout.file_size(i))
            piece = offset // ti.piece_length()
            lengths[piece] -= size
    return lengths


def served_from(meta: metainfo.Metainfo, top: str) -> Any:
    """Return the torrent_info of a tree release with its files under ``top/``, not ``<tag>/``.

    The seeder serves the tree through a symlink of another name; renaming
    files in a ``torrent_info`` changes where they are read, not the info-hash.
    """
    import libtorrent as lt

    ti = lt.torrent_info(meta.raw)
    layout = ti.layout()
    prefix = meta.name + "/"
    for i in range(layout.num_files()):
        path = layout.file_path(i).replace(os.sep, "/")
        if path.startswith(prefix):
            ti.rename_file(i, f"{top}/{path[len(prefix) :]}")
    return ti
