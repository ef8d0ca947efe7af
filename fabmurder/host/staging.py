"""Staging a tree release on a peer: a private partial directory, filled, checked, renamed.

The release is built in ``dest/.<tag>.partial-<random>/<tag>`` (the partial
directory is 0700, so nobody sees a half-written file): its directories
first, then every file an older release here already holds
(:mod:`fabmurder.host.reuse`), then libtorrent downloads the rest into it.
:func:`complete` adds the empty files and symlinks, sets every mode, scans
the tree again and compares it, hash for hash, with the manifest, and only
then renames it to ``dest/<tag>``: one rename, as for a tarball.

libtorrent keeps seeding after the install from the paths it knows, so the
old place becomes a symlink to the new one (``<partial>/<tag> ->
../<tag>``); the partial directory goes when the agent ends (or with the
next run's leftovers).
"""

from __future__ import annotations

import os
import tempfile

from fabmurder.contract import manifest_record
from fabmurder.errors import ArtifactError
from fabmurder.host import artifact, manifest, reuse
from fabmurder.host.atomic import replace_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Stage:
    """One tree release being staged: where it is built, and what it must become."""

    __slots__ = ("dest", "tag", "tree", "digest", "packed", "partial", "root", "reused")

    def __init__(
        self, dest: str, tag: str, tree: dict[str, Any], partial: str, packed: bytes, digest: str
    ) -> None:
        self.dest = dest
        self.tag = tag
        self.tree = tree
        #: the manifest deflated, as the record beside the release keeps it
        self.packed = packed
        #: the release digest (the SHA-256 of the manifest's canonical bytes)
        self.digest = digest
        #: the private directory libtorrent's save path points at
        self.partial = partial
        #: the release itself, ``<partial>/<tag>``
        self.root = os.path.join(partial, tag)
        self.reused = reuse.Reused()

    def discard(self) -> None:
        """Remove the partial directory (and, after the install, only the symlink in it)."""
        artifact.remove_quietly(self.partial)


def begin(dest: str, tag: str, tree: dict[str, Any], packed: bytes, digest: str) -> Stage:
    """Make the partial directory with the release's directories, filled from older releases.

    :param packed: ``tree`` as it rode in the torrent (:func:`manifest.pack`'s
        bytes, checked canonical by :func:`manifest.unpack_digest`), kept as
        the release's record.
    :param digest: ``tree``'s digest, as :func:`manifest.unpack_digest` returned it.

    :raises ArtifactError: if the file system has no room for the release.
    """
    os.makedirs(dest, exist_ok=True)
    need = sum(((e["size"] + 4095) // 4096 + 1) * 4096 for e in manifest.files(tree))
    free = artifact.free_bytes(dest)
    sources = reuse.index(dest)
    artifact.remove_leftovers(dest, tag)
    # Reflinks share blocks, but a copy needs them all: count the copies in full.
    if need > free:
        raise ArtifactError(f"not enough space in {dest}: need {need} bytes, {free} free", dest)
    partial = tempfile.mkdtemp(dir=dest, prefix=f".{tag}.partial-")
    stage = Stage(dest, tag, tree, partial, packed, digest)
    try:
        os.mkdir(stage.root, 0o700)
        for entry in tree["entries"]:
            if entry["type"] == "dir" and entry["path"] != ".":
                os.mkdir(os.path.join(stage.root, entry["path"]), 0o700)
        stage.reused = reuse.prefill(tree, stage.root, sources)
    except BaseException:
        stage.discard()
        raise
    return stage


def complete(stage: Stage, *, force: bool) -> str:
    """Finish the tree, check it against the manifest, install it; return ``dest/<tag>``.

    Call it once libtorrent has every piece on disk. The check rescans the
    tree (types, modes, link targets, and every file's root from its bytes),
    so anything extra, missing or different is refused, naming the path.

    :raises ArtifactError: if the tree does not match, or ``dest/<tag>``
        appeared meanwhile (without ``force``).
    """
    tree, root = stage.tree, stage.root
    entries = sorted(tree["entries"], key=lambda e: e["path"])
    for entry in entries:
        path = os.path.join(root, entry["path"])
        if entry["type"] == "file" and not entry["size"]:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        elif entry["type"] == "link":
            os.symlink(entry["target"], path)
    for entry in entries:
        if entry["type"] == "file":
            os.chmod(os.path.join(root, entry["path"]), entry["mode"], follow_symlinks=False)
    # Directories last and deepest first, so a read-only one does not block its contents.
    for entry in reversed(entries):
        if entry["type"] == "dir":
            os.chmod(os.path.join(root, entry["path"]), entry["mode"])
    found = manifest.scan(root)
    difference = manifest.first_difference(tree, found)
    if difference is not None or manifest.digest(found) != stage.digest:
        raise ArtifactError(f"the downloaded release does not match its manifest: {difference}")
    final = os.path.join(stage.dest, stage.tag)
    record = os.path.join(stage.dest, manifest_record(stage.tag))
    # Marker first: a crash between these steps leaves "not ours", never a wrong claim.
    artifact.remove_quietly(artifact.marker_path(stage.dest, stage.tag))
    artifact.remove_quietly(record)
    artifact.install_dir(root, final, force)
    os.symlink(os.path.join(os.pardir, stage.tag), root)
    replace_file(record, stage.packed, mode=0o644, prefix=f".{stage.tag}.marker-")
    artifact.write_marker(stage.dest, stage.tag, stage.digest)
    return final
