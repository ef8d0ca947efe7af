"""fabmurder's working directories belong to the deploy user alone.

Everything fabmurder writes on a host while a deploy runs (tarballs,
torrents holding the deploy token, PID and status files, logs, the
allow-list) lives in ``temp_path``. Whoever can write that directory, or
swap it, controls all of those files. So before any host command writes
there, :func:`ensure` makes sure that:

- the directory is a real directory (not a symlink), owned by this user,
  and writable by nobody else; it is created mode 0700 when missing, and
  group and other bits are taken away from an existing one;
- every directory above it is owned by root or by this user, and is either
  writable by nobody else or sticky (``/tmp``: others may not rename or
  remove our entries there); a symlink on the way counts as its owner's;
- it is not a shared system directory itself (``/tmp``, ``/var/tmp``, ...).

Anything else is refused with :class:`UnsafeDirectory`, before anything
is written. Secrets (the tracker's token) live in files of that directory
that only this user can read: :func:`read_private` refuses any other.
Both sides import this module: the control side checks the configured
``temp_path`` with :func:`refuse_shared` at once.
"""

from __future__ import annotations

import contextlib
import os
import stat

from fabmurder.errors import MurderError

#: directories shared by every user of a host: never a temp_path of ours
SHARED_DIRS = frozenset(
    {
        "/",
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/run",
        "/run/user",
        "/run/lock",
        "/var/lock",
        "/home",
        "/root",
        "/var",
        "/srv",
        "/opt",
        "/usr",
        "/etc",
        "/dev",
        "/proc",
        "/sys",
        "/boot",
        "/mnt",
        "/media",
    }
)


class UnsafeDirectory(MurderError):
    """A directory fabmurder would write to is not the deploy user's own."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def refuse_shared(path: str) -> None:
    """Refuse ``path`` when it is a shared system directory (spelled or resolved).

    :raises UnsafeDirectory: naming the path.
    """
    spelled = os.path.normpath(os.path.abspath(path))
    for candidate in {spelled, os.path.realpath(spelled)}:
        if candidate in SHARED_DIRS:
            raise UnsafeDirectory(
                f"{path} is a directory every user of the host shares; "
                "fabmurder needs one of its own (for example ~/.cache/fabmurder)",
                path,
            )


def _check_ancestor(path: str, st: os.stat_result, me: int) -> None:
    if st.st_uid not in (0, me):
        raise UnsafeDirectory(
            f"{path} belongs to uid {st.st_uid}, who could replace what fabmurder keeps below it",
            path,
        )
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeDirectory(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}, "
            "not sticky), who could replace what fabmurder keeps below it",
            path,
        )


def _check_ancestors(parent: str, me: int) -> None:
    """Check every directory from ``/`` down to ``parent``, through root's or our symlinks."""
    _check_ancestor("/", os.lstat("/"), me)
    todo = [parent]
    hops = 0
    while todo:
        parts = [p for p in todo.pop().split("/") if p]
        current = "/"
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            st = os.lstat(current)
            _check_ancestor(current, st, me)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise UnsafeDirectory(f"too many symlinks above {parent}", parent)
                # Go on from where the link points, with the rest of the path.
                todo.append(os.path.join(os.path.realpath(current), *parts[i + 1 :]))
                break


def ensure(path: str, *, create: bool = True) -> str:
    """Make sure ``path`` is this user's private directory; create it (0700) when missing.

    :param create: create a missing directory (and missing parents, 0700
        each); with ``create=False`` a missing one is only reported.
    :returns: the absolute path.
    :raises UnsafeDirectory: when the directory or one above it is not safe,
        or it is missing and ``create`` is false.
    """
    path = os.path.normpath(os.path.abspath(path))
    refuse_shared(path)
    me = os.geteuid()
    parent = os.path.dirname(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise UnsafeDirectory(f"{path} does not exist", path) from None
        _make_parents(parent)
        _check_ancestors(parent, me)
        # One made by a concurrent command meanwhile is checked below like any other.
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    else:
        _check_ancestors(parent, me)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(f"{path} is a symlink; fabmurder's directory must be real", path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory", path)
    if st.st_uid != me:
        raise UnsafeDirectory(
            f"{path} belongs to uid {st.st_uid}, not to this user ({me}); "
            "remove it or choose another temp_path",
            path,
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            "remove it or choose another temp_path",
            path,
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        # Ours and not writable by others: only reading is left to take away.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_ino != st.st_ino:
                raise UnsafeDirectory(f"{path} changed while it was checked", path)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return path


def _make_parents(parent: str) -> None:
    missing = []
    current = parent
    while not os.path.lexists(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)


def read_private(path: str, max_bytes: int = 4096) -> str:
    """Return the text of ``path``, a secret only this user may read or write.

    The file must be a regular file (never read through a symlink), owned by
    this user, with no group or other permission bits: a token someone else
    could have planted or read is no secret.

    :raises UnsafeDirectory: naming what is wrong (also for a missing file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeDirectory(f"cannot read {path}: {exc.strerror}", path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeDirectory(f"{path} is not a regular file", path)
        if st.st_uid != os.geteuid():
            raise UnsafeDirectory(f"{path} belongs to uid {st.st_uid}, not to this user", path)
        if st.st_mode & 0o077:
            raise UnsafeDirectory(
                f"{path} is readable or writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); a secret must be 0600",
                path,
            )
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsafeDirectory(f"{path} is larger than {max_bytes} bytes", path)
    return data.decode("utf-8", "replace").strip()
