"""``create``: pack a release into ``<tag>.tar`` and hash it into ``<tag>.torrent``.

Runs on the seeder. It prints everything the control side records about the
release, above all the tarball's SHA-256 that every peer checks later.
"""

from __future__ import annotations

import argparse
import os

from fabmurder.host import artifact, metainfo, privatedir
from fabmurder.host.cli import EXIT_OK, emit, run
from fabmurder.tags import validate_tag

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
) -> dict[str, Any]:
    """Pack ``src`` into ``out_dir/<tag>.tar``, write ``out_dir/<tag>.torrent`` and describe both.

    Without ``piece_size``, the piece size suits the tarball's size and the
    number of ``peers`` (:func:`fabmurder.host.metainfo.default_piece_size`).

    :raises ConfigError: on an invalid tag.
    :raises ArtifactError: if ``src`` is missing or empty.
    :raises TorrentError: on a bad piece size or announce URL.
    """
    validate_tag(tag)
    if piece_size is not None:
        metainfo.check_piece_size(piece_size)
    privatedir.ensure(out_dir)
    tarball = os.path.join(out_dir, f"{tag}.tar")
    torrent = os.path.join(out_dir, f"{tag}.torrent")
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
    }


def parser() -> argparse.ArgumentParser:
    """Return the ``create`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder create", description=__doc__)
    p.add_argument("--src", required=True, help="directory (its contents) or file to ship")
    p.add_argument("--out-dir", required=True, help="where <tag>.tar and <tag>.torrent go")
    p.add_argument("--tag", required=True, help="release name")
    p.add_argument("--announce", required=True, help="tracker announce URL")
    p.add_argument("--piece-size", type=int, default=None, help="default: by size and --peers")
    p.add_argument("--peers", type=int, default=1, help="how many peers will download it")
    return p


def main(argv: list[str]) -> int:
    """Run ``create`` and print its JSON."""

    def body(args: argparse.Namespace) -> int:
        emit(
            create_release(
                args.src, args.out_dir, args.tag, args.announce, args.piece_size, args.peers
            )
        )
        return EXIT_OK

    return run(parser(), argv, body)
