"""The artifact format: an uncompressed tar of a release, its SHA-256, and safe extraction.

A release travels as one uncompressed tarball (pieces of a compressed stream
cannot be checked or shared any faster, and releases are usually compressed
already). Packing keeps modes, symlinks, hardlinks, empty directories and
any file name. Extraction trusts nothing in the tarball: it runs on hosts
with Python 3.11.2, whose :mod:`tarfile` has no extraction filters, so every
member is checked here against the real file system before it is written,
and the release only appears at its final path by one ``rename``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator

from fabmurder.contract import manifest_record, marker
from fabmurder.errors import ArtifactError
from fabmurder.host.atomic import replace_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

#: bytes read at a time when hashing
CHUNK = 1024 * 1024

#: mode bits a release may not carry: a deploy must not create setuid programs
FORBIDDEN_MODE_BITS = stat.S_ISUID | stat.S_ISGID


class Packed:
    """What :func:`pack` wrote.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect``,
    12 ms of CPU at every agent start, with 17 agents sharing 2 cores in the lab.
    """

    __slots__ = ("path", "sha256", "size", "files")

    def __init__(self, path: str, sha256: str, size: int, files: int) -> None:
        self.path = path
        self.sha256 = sha256
        self.size = size
        self.files = files


class _HashingWriter:
    """A write-only file object that hashes everything written through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()


def _normalise_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owners differ between seeder and peers; extraction never chowns, so
    # do not leak the seeder's user names into the artifact.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """Yield ``(path, arcname)`` for everything under ``root``, parents first, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        names = sorted(dirnames + filenames)
        for name in names:
            arc = name if rel == "." else os.path.join(rel, name)
            yield os.path.join(dirpath, name), arc
        # os.walk does not descend into symlinked directories, which is what
        # we want: the symlink itself is packed.


def pack(src: str, out_path: str) -> Packed:
    """Pack ``src`` (a directory's contents, or one file) into the tarball ``out_path``.

    The tarball is written next to its final name and renamed into place,
    and its SHA-256 is computed while it is written.

    :raises ArtifactError: if ``src`` is missing or an empty directory.
    """
    if not os.path.exists(src):
        raise ArtifactError(f"files_path {src!r} does not exist", path=src)
    # files_path is often a "current" symlink: ship what it points to.
    src = os.path.realpath(src)
    is_dir = os.path.isdir(src)
    if is_dir and not os.listdir(src):
        raise ArtifactError(f"files_path {src!r} is an empty directory", path=src)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=os.path.basename(out_path) + ".tmp-")
    files = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=writer, mode="w", format=tarfile.PAX_FORMAT
            ) as tar:
                if is_dir:
                    # "." carries the mode of the release's top directory.
                    tar.add(src, arcname=".", recursive=False, filter=_normalise_owner)
                    for path, arc in _walk(src):
                        tar.add(path, arcname=arc, recursive=False, filter=_normalise_owner)
                        files += 1
                else:
                    tar.add(src, arcname=os.path.basename(src), filter=_normalise_owner)
                    files = 1
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(tmp, out_path)
    except BaseException:
        remove_quietly(tmp)
        raise
    return Packed(path=out_path, sha256=writer.digest.hexdigest(), size=writer.size, files=files)


def claim_download(path: str) -> None:
    """Make the file a download will fill: ours, private (0600), and not through a symlink.

    libtorrent creates missing files with the process's umask (0644 under
    022), which would let any local user read the release before it is
    installed, files that are 0600 inside it included. An existing file (a
    resumed download) is kept and made private.

    :raises ArtifactError: if ``path`` is a symlink, not a regular file, or
        belongs to someone else.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ArtifactError(f"cannot create the download {path}: {exc}", path=path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ArtifactError(f"the download {path} is not a file of this user's", path=path)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _hash_stream(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    """Return the SHA-256 of the file at ``path`` in hex."""
    with open(path, "rb") as fh:
        return _hash_stream(fh)


def _expected(expected_sha256: str, path: str) -> str:
    expected = expected_sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ArtifactError(f"expected SHA-256 {expected_sha256!r} is not 64 hex digits", path)
    return expected


def _mismatch(path: str, expected: str, actual: str) -> ArtifactError:
    return ArtifactError(f"SHA-256 mismatch for {path}: expected {expected}, got {actual}", path)


def verify(path: str, expected_sha256: str) -> str:
    """Check the SHA-256 of ``path`` against ``expected_sha256`` and return it.

    :raises ArtifactError: on a mismatch or a malformed expected value.
    """
    expected = _expected(expected_sha256, path)
    actual = sha256_file(path)
    if actual != expected:
        raise _mismatch(path, expected, actual)
    return actual


def open_verified(path: str, expected_sha256: str) -> IO[bytes]:
    """Open ``path`` (never through a symlink), check its SHA-256, and return it rewound.

    Hand the open file to :func:`extract`: what was hashed is then what is
    extracted, even if someone who can write the directory swaps the path in
    between (a rename does not change an open file's inode).

    :raises ArtifactError: on a mismatch, a malformed expected value, a
        symlink or anything but a regular file at ``path``.
    """
    expected = _expected(expected_sha256, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ArtifactError(f"cannot open tarball {path}: {exc}", path=path) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactError(f"tarball {path} is not a regular file", path=path)
    fh = os.fdopen(fd, "rb")
    try:
        actual = _hash_stream(fh)
        if actual != expected:
            raise _mismatch(path, expected, actual)
        fh.seek(0)
    except BaseException:
        fh.close()
        raise
    return fh


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_member(member: tarfile.TarInfo, root: str) -> None:
    """Refuse a member that could write outside ``root`` or install something dangerous.

    ``root`` must be a real path (no symlinks). The check resolves paths
    against the file system as it is now, so call it just before extracting
    the member: a symlink extracted earlier is then followed, as the write
    would follow it.

    :raises ArtifactError: naming the member and what is wrong with it.
    """
    name = member.name

    def refuse(why: str) -> ArtifactError:
        return ArtifactError(f"refusing tar member {name!r}: {why}", path=name)

    if not name or "\x00" in name:
        raise refuse("empty or invalid name")
    if name.startswith("/") or os.path.isabs(name):
        raise refuse("absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise refuse("'..' in path")
    normal = os.path.normpath(name)
    if normal == "." and not member.isdir():
        raise refuse("names the target directory itself")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = (
            "device"
            if (member.ischr() or member.isblk())
            else "fifo"
            if member.isfifo()
            else "special"
        )
        raise refuse(f"{kind} file")
    if member.mode & FORBIDDEN_MODE_BITS:
        raise refuse(f"setuid/setgid mode {member.mode:o}")
    target = os.path.realpath(os.path.join(root, normal))
    if not _inside(root, target):
        raise refuse("resolves outside the target directory")
    if member.issym():
        link = member.linkname
        if not link or link.startswith("/"):
            raise refuse(f"absolute or empty symlink target {link!r}")
        resolved = os.path.realpath(os.path.join(root, os.path.dirname(normal), link))
        if not _inside(root, resolved):
            raise refuse(f"symlink to {link!r} points outside the target directory")
    elif member.islnk():
        link = member.linkname
        if not link or link.startswith("/") or ".." in link.split("/"):
            raise refuse(f"hardlink to {link!r} points outside the target directory")
        resolved = os.path.realpath(os.path.join(root, link))
        if not _inside(root, resolved):
            raise refuse(f"hardlink to {link!r} points outside the target directory")


class _SafeTar(tarfile.TarFile):
    """A TarFile that never changes owners: files belong to whoever deploys."""

    def chown(self, tarinfo: tarfile.TarInfo, targetpath: Any, numeric_owner: bool) -> None:
        return None


def _second_guard() -> Any:
    """Return a tarfile ``filter`` that rejects like ``data_filter`` but changes nothing.

    ``data_filter`` would also clear group/other write bits, and a deploy
    must be mode-for-mode identical to the seeder's tree, so only its
    refusals are kept. ``None`` where tarfile has no filters (before 3.11.4).
    """
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return None

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        try:
            data_filter(member, path)
        except tarfile.FilterError as exc:
            raise ArtifactError(f"refusing tar member {member.name!r}: {exc}", member.name) from exc
        return member

    return guard


def _required_bytes(members: list[tarfile.TarInfo]) -> int:
    # Regular files rounded up to 4 KiB blocks, plus one block per entry.
    return sum(((m.size + 4095) // 4096 + 1) * 4096 for m in members)


def free_bytes(path: str) -> int:
    """Return the bytes this user may still write on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def remove_quietly(path: str) -> None:
    """Remove the file, symlink or tree at ``path``; an error is no error."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


def _check_tree_links(root: str) -> None:
    """Refuse the extracted tree if any symlink now resolves outside ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not _inside(root, os.path.realpath(path)):
                rel = os.path.relpath(path, root)
                raise ArtifactError(
                    f"refusing tar member {rel!r}: symlink resolves outside the target directory",
                    path=rel,
                )


def marker_path(dest: str, tag: str) -> str:
    """Return the path of the marker that says ``dest/<tag>`` was installed by fabmurder."""
    return os.path.join(dest, marker(tag))


def installed_sha256(dest: str, tag: str) -> str | None:
    """Return the SHA-256 recorded for the release ``dest/<tag>``, or None.

    None means "not ours": the release is missing, or it exists but no
    well-formed marker names the artifact it came from.
    """
    if not os.path.isdir(os.path.join(dest, tag)):
        return None
    try:
        with open(marker_path(dest, tag), encoding="ascii") as fh:
            text = fh.read(200).strip().lower()
    except (OSError, UnicodeDecodeError):
        return None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        return None
    return text


def write_marker(dest: str, tag: str, sha256: str) -> None:
    """Record the digest of the release now at ``dest/<tag>`` (by temp file and rename)."""
    data = (sha256.strip().lower() + "\n").encode("ascii")
    replace_file(marker_path(dest, tag), data, mode=0o644, prefix=f".{tag}.marker-")


def extract(
    tarball: str | IO[bytes],
    dest: str,
    tag: str,
    *,
    force: bool = False,
    sha256: str | None = None,
) -> str:
    """Extract ``tarball`` (a path, or a file from :func:`open_verified`) to ``dest/<tag>``.

    Returns ``dest/<tag>``.

    The members are written into ``dest/.<tag>.partial-<random>``, checked
    one by one, and the directory is renamed to ``dest/<tag>`` only once
    everything is in place. On any failure the partial directory is removed
    and ``dest/<tag>`` is untouched.

    :param force: replace an existing ``dest/<tag>`` (moved aside atomically,
        then removed).
    :param sha256: the tarball's verified digest; recorded in the marker
        ``dest/.<tag>.sha256`` once the release is in place, so that a rerun
        can tell "installed by us from this artifact" from "someone else's".
    :raises ArtifactError: if the destination exists (without ``force``),
        the tarball is unreadable or hostile, or the disk is too small.
    """
    final = os.path.join(dest, tag)
    if os.path.lexists(final) and not force:
        raise ArtifactError(f"destination {final} already exists; use force to replace it", final)
    os.makedirs(dest, exist_ok=True)
    name = tarball if isinstance(tarball, str) else str(getattr(tarball, "name", "tarball"))
    try:
        if isinstance(tarball, str):
            tar = _SafeTar.open(tarball, mode="r:")
        else:
            tar = _SafeTar.open(fileobj=tarball, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"cannot read tarball {name}: {exc}", path=name) from exc
    # Every failure to restore a mode or a time is an error, not a warning.
    tar.errorlevel = 2
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as exc:
            raise ArtifactError(f"corrupt tarball {name}: {exc}", path=name) from exc
        need, free = _required_bytes(members), free_bytes(dest)
        if need > free:
            raise ArtifactError(
                f"not enough space in {dest}: need {need} bytes, {free} free", path=dest
            )
        remove_leftovers(dest, tag)
        partial = tempfile.mkdtemp(dir=dest, prefix=f".{tag}.partial-")
        try:
            _extract_members(tar, members, os.path.realpath(partial))
            _check_tree_links(os.path.realpath(partial))
            # The old marker goes first: a crash between the two renames must
            # leave "not ours" (refused, needs force), never a wrong claim.
            remove_quietly(marker_path(dest, tag))
            remove_quietly(os.path.join(dest, manifest_record(tag)))
            install_dir(partial, final, force)
            if sha256:
                write_marker(dest, tag, sha256)
        except BaseException as exc:
            remove_quietly(partial)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise ArtifactError(
                    f"no space left on device while extracting to {dest}", dest
                ) from exc
            if isinstance(exc, OSError | tarfile.TarError):
                raise ArtifactError(f"extracting to {dest} failed: {exc}", path=dest) from exc
            raise
    return final


def remove_leftovers(dest: str, tag: str) -> list[str]:
    """Remove ``dest/.<tag>.partial-*``, ``.old-*`` and ``.marker-*`` left by a killed extraction.

    Only this tag's names are touched, and only directly inside ``dest``; one
    agent per tag and host runs at a time (its PID file sees to that).
    """
    removed = []
    for name in os.listdir(dest):
        if name.startswith((f".{tag}.partial-", f".{tag}.old-", f".{tag}.marker-")):
            remove_quietly(os.path.join(dest, name))
            removed.append(name)
    return removed


def _extract_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: str) -> None:
    guard = _second_guard()
    # The top directory keeps mkdtemp's 0700 unless the tarball names ".".
    top_mode = 0o755
    directories = []
    for member in members:
        check_member(member, root)
        if os.path.normpath(member.name) == ".":
            top_mode = member.mode & 0o7777
            continue
        kwargs: dict[str, Any] = {"set_attrs": not member.isdir(), "numeric_owner": True}
        if guard is not None:
            kwargs["filter"] = guard
        tar.extract(member, root, **kwargs)
        if member.isdir():
            directories.append(member)
    # Directory modes last, deepest first, so a read-only directory does not
    # block its own contents from being written.
    for member in sorted(directories, key=lambda m: m.name, reverse=True):
        path = os.path.join(root, os.path.normpath(member.name))
        os.chmod(path, member.mode & 0o7777)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    os.chmod(root, top_mode)


def install_dir(partial: str, final: str, force: bool) -> None:
    """Rename ``partial`` to ``final``; with ``force`` an old ``final`` is moved aside first."""
    if os.path.lexists(final):
        if not force:
            raise ArtifactError(f"destination {final} appeared during extraction", path=final)
        parent, name = os.path.split(final)
        aside = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
        old = os.path.join(aside, name)
        os.rename(final, old)
        try:
            os.rename(partial, final)
        except BaseException:
            os.rename(old, final)
            remove_quietly(aside)
            raise
        remove_quietly(aside)
    else:
        os.rename(partial, final)
