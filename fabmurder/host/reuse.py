"""Filling a new tree release from the releases already on this peer, before any download.

Every tree release installed here left its manifest beside it
(``.<tag>.manifest``, next to its ``.<tag>.sha256`` marker). The index
reads those manifests, not the files: a file's recorded root is trusted to
choose what to copy, never to decide what is right. libtorrent then checks
every copied piece against the new torrent, so a file edited in place
after its install only costs the download of its pieces, and its edited
bytes are never served (a piece that fails the check is not ours to seed).

The bytes are placed by reflink where the file system can share extents
(``FICLONE``: btrfs, XFS, bcachefs), else copied; never hard-linked, since
changing a file in one release must never change another.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from fabmurder.contract import manifest_record, marker
from fabmurder.errors import ArtifactError
from fabmurder.host import manifest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: ioctl number of FICLONE (linux/fs.h): share the source's extents, copy-on-write
FICLONE = 0x40049409
#: bytes copied per call when the file system cannot reflink
COPY_CHUNK = 8 * 1024 * 1024
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS)


class Reused:
    """What :func:`prefill` placed: files, bytes, and how many of those by reflink."""

    __slots__ = ("files", "bytes", "reflinked")

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.reflinked = 0


def index(dest: str) -> dict[str, list[str]]:
    """Return ``{root: [path, ...]}`` of the files of every tree release under ``dest``.

    A release counts when its directory, its manifest and its marker are
    all there and the marker names that manifest's digest; anything else
    (a tarball release, a half-removed one, a record that does not parse)
    is skipped, never an error.
    """
    found: dict[str, list[str]] = {}
    try:
        names = os.listdir(dest)
    except OSError:
        return found
    for name in sorted(names):
        if not (name.startswith(".") and name.endswith(".manifest")):
            continue
        tag = name[1 : -len(".manifest")]
        if not tag or name != manifest_record(tag):
            continue
        tree = _recorded(dest, tag)
        if tree is None:
            continue
        for entry in manifest.files(tree):
            found.setdefault(entry["root"], []).append(os.path.join(dest, tag, entry["path"]))
    return found


def _recorded(dest: str, tag: str) -> dict[str, Any] | None:
    if not os.path.isdir(os.path.join(dest, tag)) or os.path.islink(os.path.join(dest, tag)):
        return None
    try:
        with open(os.path.join(dest, manifest_record(tag)), "rb") as fh:
            blob = fh.read(manifest.MAX_MANIFEST_BYTES)
        with open(os.path.join(dest, marker(tag)), encoding="ascii") as fh:
            recorded = fh.read(200).strip()
        tree = manifest.unpack(blob)
    except (OSError, UnicodeDecodeError, ArtifactError):
        return None
    return tree if manifest.digest(tree) == recorded else None


def prefill(tree: dict[str, Any], root: str, sources: dict[str, list[str]]) -> Reused:
    """Place in ``root`` every file of ``tree`` whose root some local release holds.

    ``root`` is the staging directory, whose directories exist already. A
    source that is gone, is not a regular file or has the wrong size now
    is passed over for the next one with that root (or the download).
    """
    reused = Reused()
    for entry in manifest.files(tree):
        for source in sources.get(entry["root"], ()):
            target = os.path.join(root, entry["path"])
            how = place(source, target, entry["size"])
            if how is None:
                continue
            reused.files += 1
            reused.bytes += entry["size"]
            reused.reflinked += how == "reflink"
            break
    return reused


def place(source: str, target: str, size: int) -> str | None:
    """Copy ``source`` to the new file ``target`` (0600); return ``"reflink"``, ``"copy"`` or None.

    None when ``source`` is not a regular file of ``size`` bytes (opened
    without following a symlink); ``target`` is then not left behind.
    """
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(src_fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst_fd = os.open(target, flags, 0o600)
        try:
            how = _copy(src_fd, dst_fd, size)
        except BaseException:
            os.close(dst_fd)
            os.unlink(target)
            raise
        os.close(dst_fd)
        return how
    finally:
        os.close(src_fd)


def _copy(src_fd: int, dst_fd: int, size: int) -> str:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return "reflink"
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            raise
    done = 0
    while done < size:
        count = min(COPY_CHUNK, size - done)
        try:
            n = os.copy_file_range(src_fd, dst_fd, count, done, done)
        except OSError as exc:
            if exc.errno not in _NO_REFLINK:
                raise
            n = os.pwrite(dst_fd, os.pread(src_fd, count, done), done)
        if n == 0:
            break
        done += n
    return "copy"
