"""Filling a new tree release from the releases already on this peer, before any download.

Every tree release installed here left its manifest beside it
(``.<tag>.manifest``, next to its ``.<tag>.sha256`` marker). The index
reads those manifests, not the files: a file's recorded root is trusted to
choose what to copy, never to decide what is right. libtorrent then checks
every copied piece against the new torrent, so a file edited in place
after its install only costs the download of its pieces, and its edited
bytes are never served (a piece that fails the check is not ours to seed).

A file whose root no release here holds, but whose path one does (the
same library, changed inside), starts as a copy of that older file, cut
or extended to its new size: BEP 52 pieces are aligned to the file's
start, so every piece before the first changed byte passes the check and
only the changed pieces (and, when the size changed, every later one) are
downloaded. Without it, a 64 KiB edit inside a 1 MiB file cost the whole
file on every peer (the benchmark's delta run of commit 41adf49).

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
    """What :func:`prefill` placed: files and bytes by root, by reflink, and by path."""

    __slots__ = ("files", "bytes", "reflinked", "by_path")

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.reflinked = 0
        #: files started from an older file at the same path (libtorrent fetches what differs)
        self.by_path = 0


class Sources:
    """The files of the tree releases on this peer: by root, and by path (newest release first)."""

    __slots__ = ("roots", "paths")

    def __init__(self) -> None:
        self.roots: dict[str, list[str]] = {}
        self.paths: dict[str, list[str]] = {}


def index(dest: str) -> Sources:
    """Return the files of every tree release under ``dest``, by root and by path.

    A release counts when its directory, its manifest and its marker are
    all there and the marker names that manifest's digest; anything else
    (a tarball release, a half-removed one, a record that does not parse)
    is skipped, never an error. Newer records (by mtime) come first.
    """
    found = Sources()
    try:
        names = os.listdir(dest)
    except OSError:
        return found
    records = []
    for name in names:
        tag = name[1 : -len(".manifest")] if name.endswith(".manifest") else ""
        if not tag or name != manifest_record(tag):
            continue
        try:
            records.append((-os.lstat(os.path.join(dest, name)).st_mtime, tag))
        except OSError:
            continue
    for _age, tag in sorted(records):
        tree = _recorded(dest, tag)
        if tree is None:
            continue
        for entry in manifest.files(tree):
            path = os.path.join(dest, tag, entry["path"])
            found.roots.setdefault(entry["root"], []).append(path)
            found.paths.setdefault(entry["path"], []).append(path)
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


def prefill(tree: dict[str, Any], root: str, sources: Sources) -> Reused:
    """Place in ``root`` every file of ``tree`` that some local release holds, by root or path.

    ``root`` is the staging directory, whose directories exist already. A
    source that is gone, is not a regular file or has the wrong size now
    is passed over for the next one with that root (or the download). A
    file no root matches starts from the newest file at its path, if any.
    """
    reused = Reused()
    for entry in manifest.files(tree):
        target = os.path.join(root, entry["path"])
        for source in sources.roots.get(entry["root"], ()):
            how = place(source, target, entry["size"])
            if how is None:
                continue
            reused.files += 1
            reused.bytes += entry["size"]
            reused.reflinked += how == "reflink"
            break
        else:
            for source in sources.paths.get(entry["path"], ())[:1]:
                reused.by_path += place(source, target, entry["size"], exact=False) is not None
    return reused


def place(source: str, target: str, size: int, *, exact: bool = True) -> str | None:
    """Copy ``source`` to the new file ``target`` (0600); return ``"reflink"``, ``"copy"`` or None.

    None when ``source`` is not a regular file of ``size`` bytes (opened
    without following a symlink); ``target`` is then not left behind.
    Without ``exact``, any size will do: the copy is cut or extended (with
    zeros) to ``size``.
    """
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(src_fd)
        if not stat.S_ISREG(st.st_mode) or (exact and st.st_size != size):
            return None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst_fd = os.open(target, flags, 0o600)
        try:
            how = _copy(src_fd, dst_fd, min(size, st.st_size))
            if st.st_size != size:
                os.ftruncate(dst_fd, size)
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
