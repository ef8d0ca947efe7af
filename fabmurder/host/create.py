"""``create``: pack a release into ``<tag>.tar`` and hash it into ``<tag>.torrent``.

Runs on the seeder. It prints everything the control side records about the
release, above all the release digest that every peer checks later: the
tarball's SHA-256, or with ``--layout tree`` the manifest's (the tree is
then not packed: ``<tag>.tree`` is a symlink to it, which the seeder
serves, and ``<tag>.torrent`` is a v2 torrent of its files, see
:mod:`fabmurder.host.tree`).
"""

from __future__ import annotations

import argparse
import os

from fabmurder import contract
from fabmurder.errors import ArtifactError
from fabmurder.host import artifact, metainfo, privatedir, tree
from fabmurder.host.cli import EXIT_OK, emit, run
from fabmurder.tags import validate_tag

#: how a release travels: one tarball, or its files one by one (a tree release)
LAYOUTS = ("tar", "tree")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def create_release(
    src: str,
    out_dir: str,
    tag: str,
    announce: str,
    piece_size: int | None = None,
    peers: int = 1,
    layout: str = "tar",
) -> dict[str, Any]:
    """Pack ``src`` into ``out_dir/<tag>.tar``, write ``out_dir/<tag>.torrent`` and describe both.

    Without ``piece_size``, the piece size suits the tarball's size and the
    number of ``peers`` (:func:`fabmurder.host.metainfo.default_piece_size`).
    ``layout="tree"`` ships a directory as a tree release (a single file
    still goes as a tarball: there is nothing to share between releases).

    :raises ConfigError: on an invalid tag.
    :raises ArtifactError: if ``src`` is missing or empty.
    :raises TorrentError: on a bad piece size or announce URL.
    """
    validate_tag(tag)
    if piece_size is not None:
        metainfo.check_piece_size(piece_size)
    privatedir.ensure(out_dir)
    tarball = os.path.join(out_dir, contract.tarball(tag))
    torrent = os.path.join(out_dir, contract.torrent(tag))
    if layout not in LAYOUTS:
        raise ArtifactError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "tree" and os.path.isdir(src):
        return _create_tree(src, out_dir, tag, announce, piece_size, peers)
    packed = artifact.pack(src, tarball)
    if piece_size is None:
        piece_size = metainfo.default_piece_size(packed.size, peers)
    meta = metainfo.create(tarball, torrent, announce, piece_size)
    return {
        "tag": tag,
        "tarball": os.path.abspath(tarball),
        "torrent": os.path.abspath(torrent),
        "sha256": packed.sha256,
        "size": packed.size,
        "info_hash": meta.info_hash,
        "piece_size": meta.piece_size,
        "files": packed.files,
        "layout": "tar",
    }


def _create_tree(
    src: str, out_dir: str, tag: str, announce: str, piece_size: int | None, peers: int
) -> dict[str, Any]:
    src = os.path.realpath(src)
    if not os.listdir(src):
        raise ArtifactError(f"files_path {src!r} is an empty directory", path=src)
    if piece_size is None:
        piece_size = metainfo.default_piece_size(_tree_bytes(src), peers)
    torrent = os.path.join(out_dir, contract.torrent(tag))
    meta, manifest = tree.create(src, torrent, tag, announce, piece_size)
    # The seeder serves the tree where it is, through this link (see transfer.seed).
    link = os.path.join(out_dir, contract.tree_link(tag))
    replace_link(link, src)
    return {
        "tag": tag,
        "tarball": "",
        "torrent": os.path.abspath(torrent),
        "sha256": meta.digest,
        "size": meta.size,
        "info_hash": meta.info_hash,
        "piece_size": meta.piece_size,
        "files": len(manifest["entries"]) - 1,
        "layout": "tree",
        "tree": os.path.abspath(link),
    }


def _tree_bytes(src: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
    return total


def replace_link(path: str, target: str) -> None:
    """Point the symlink ``path`` at ``target``, replacing what is there by one rename."""
    tmp = f"{path}{contract.TEMP_INFIX}link"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, path)


def parser() -> argparse.ArgumentParser:
    """Return the ``create`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder create", description=__doc__)
    p.add_argument("--src", required=True, help="directory (its contents) or file to ship")
    p.add_argument("--out-dir", required=True, help="where <tag>.tar and <tag>.torrent go")
    p.add_argument("--tag", required=True, help="release name")
    p.add_argument("--announce", required=True, help="tracker announce URL")
    p.add_argument("--piece-size", type=int, default=None, help="default: by size and --peers")
    p.add_argument("--peers", type=int, default=1, help="how many peers will download it")
    p.add_argument(
        "--layout", choices=LAYOUTS, default="tar", help="tar: one tarball; tree: file by file"
    )
    return p


def main(argv: list[str]) -> int:
    """Run ``create`` and print its JSON."""

    def body(args: argparse.Namespace) -> int:
        emit(
            create_release(
                args.src,
                args.out_dir,
                args.tag,
                args.announce,
                args.piece_size,
                args.peers,
                args.layout,
            )
        )
        return EXIT_OK

    return run(parser(), argv, body)
