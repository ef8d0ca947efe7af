"""Packing a release, hashing it, and extracting it safely and atomically."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless

from fabmurder.errors import ArtifactError
from fabmurder.host import artifact


def make_release_tree(root: Path, big: int = 300_000) -> Path:
    """Build a tree with nested dirs, a symlink, an executable, an empty dir and a spaced name."""
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "lib" / "deep" / "er").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "bin" / "run me").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run me").chmod(0o755)
    (root / "lib" / "deep" / "er" / "data.bin").write_bytes(os.urandom(big))
    (root / "lib" / "private").write_text("secret")
    (root / "lib" / "private").chmod(0o600)
    (root / "lib" / "shared").mkdir()
    (root / "lib" / "shared").chmod(0o775)
    (root / "lib" / "current").symlink_to("deep/er/data.bin")
    (root / "bin" / "up").symlink_to("../lib")
    os.link(root / "lib" / "private", root / "lib" / "private-hardlink")
    return root


def tree_signature(root: Path) -> dict[str, tuple[int, str]]:
    """Map each relative path to (mode, content digest or link target, hardlink partners).

    Files that are one inode (hardlinks) name each other, so a tree whose
    hardlinks became copies does not match.
    """
    found: dict[str, tuple[int, str]] = {".": (stat.S_IMODE(os.lstat(root).st_mode), "dir")}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = "link:" + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                what = "dir"
            else:
                what = hashlib.sha256(path.read_bytes()).hexdigest()
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            found[rel] = (stat.S_IMODE(st.st_mode), what)
    for names in inodes.values():
        for rel in names if len(names) > 1 else ():
            mode, what = found[rel]
            found[rel] = (mode, what + " same file as " + ",".join(sorted(set(names) - {rel})))
    return found


def test_pack_then_extract_gives_a_byte_mode_and_hardlink_identical_tree(tmp_path: Path) -> None:
    src = make_release_tree(tmp_path / "src")
    src.chmod(0o750)
    packed = artifact.pack(str(src), str(tmp_path / "r.tar"))
    assert packed.sha256 == artifact.sha256_file(str(tmp_path / "r.tar"))
    assert packed.size == os.path.getsize(tmp_path / "r.tar")
    final = artifact.extract(str(tmp_path / "r.tar"), str(tmp_path / "dest"), "v1")
    assert final == str(tmp_path / "dest" / "v1")
    assert tree_signature(Path(final)) == tree_signature(src)
    # the hardlink is still one file with its partner, not a copy
    assert tree_signature(src)["lib/private"][1].endswith("same file as lib/private-hardlink")
    assert os.path.samefile(Path(final) / "lib/private", Path(final) / "lib/private-hardlink")
    assert os.listdir(tmp_path / "dest") == ["v1"]


def test_packing_a_single_file_ships_that_file(tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(b"x" * 1000)
    (tmp_path / "app.bin").chmod(0o751)
    artifact.pack(str(tmp_path / "app.bin"), str(tmp_path / "r.tar"))
    final = Path(artifact.extract(str(tmp_path / "r.tar"), str(tmp_path / "dest"), "v1"))
    assert (final / "app.bin").read_bytes() == b"x" * 1000
    assert stat.S_IMODE((final / "app.bin").stat().st_mode) == 0o751


def test_a_symlinked_source_ships_what_it_points_to(tmp_path: Path) -> None:
    src = make_release_tree(tmp_path / "releases" / "r1")
    (tmp_path / "current").symlink_to("releases/r1")
    artifact.pack(str(tmp_path / "current"), str(tmp_path / "r.tar"))
    final = artifact.extract(str(tmp_path / "r.tar"), str(tmp_path / "dest"), "v1")
    assert tree_signature(Path(final)) == tree_signature(src)


def test_packing_again_gives_the_same_bytes_whatever_the_owner_access_times_or_listing_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_release_tree(tmp_path / "src")
    first = artifact.pack(str(src), str(tmp_path / "a.tar"))
    # What differs between two checkouts of one release, and must not reach the tarball:
    paths = [src, *sorted(src.rglob("*"))]
    for path in paths:
        st = os.lstat(path)
        if os.geteuid() == 0:
            os.lchown(path, 4321, 4321)  # another owner
        if not path.is_symlink():
            os.chmod(path, stat.S_IMODE(st.st_mode))  # a new ctime, the same mode
        # read long ago (atime), modified at the very same moment (mtime)
        os.utime(path, ns=(st.st_atime_ns - 10**12, st.st_mtime_ns), follow_symlinks=False)
    real_walk = os.walk

    def walk_in_reverse(top: str, *args: object, **kwargs: object) -> Iterator[Any]:
        # another file system lists the entries of each directory the other way round
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):  # type: ignore[arg-type]
            dirnames.reverse()
            filenames.reverse()
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", walk_in_reverse)
    second = artifact.pack(str(src), str(tmp_path / "b.tar"))
    assert second.sha256 == first.sha256
    # The comparison can fail: a file modified at another moment is another tarball.
    data = src / "lib" / "deep" / "er" / "data.bin"
    os.utime(data, ns=(os.lstat(data).st_atime_ns, os.lstat(data).st_mtime_ns + 10**9))
    assert artifact.pack(str(src), str(tmp_path / "c.tar")).sha256 != first.sha256


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_packing_a_missing_or_empty_source_is_refused_and_writes_nothing(
    tmp_path: Path, kind: str
) -> None:
    src = tmp_path / "src"
    if kind == "empty":
        src.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArtifactError, match=kind.replace("empty", "empty directory")):
        artifact.pack(str(src), str(out / "r.tar"))
    assert os.listdir(out) == []


def test_verify_accepts_the_right_sha256_and_names_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"release")
    good = hashlib.sha256(b"release").hexdigest()
    assert artifact.verify(str(path), good.upper()) == good
    with pytest.raises(ArtifactError, match="SHA-256 mismatch"):
        artifact.verify(str(path), "0" * 64)
    with pytest.raises(ArtifactError, match="64 hex"):
        artifact.verify(str(path), "xyz")


# -- hostile tarballs ------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    data = attrs.pop("data", b"")
    assert isinstance(data, bytes)
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.isreg():
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


HOSTILE: dict[str, Callable[[tarfile.TarFile], None]] = {
    "absolute path": lambda t: _add(t, "/tmp/fabmurder-evil", data=b"x"),
    "dot-dot member": lambda t: _add(t, "ok/../../evil", data=b"x"),
    "symlink escape": lambda t: _add(t, "link", type=tarfile.SYMTYPE, linkname="../../outside"),
    "absolute symlink": lambda t: _add(t, "link", type=tarfile.SYMTYPE, linkname="/etc"),
    "write through symlink": lambda t: (
        _add(t, "inner", type=tarfile.SYMTYPE, linkname="."),
        _add(t, "esc", type=tarfile.SYMTYPE, linkname="inner/.."),
    ),
    "hardlink escape": lambda t: _add(t, "hl", type=tarfile.LNKTYPE, linkname="../outside/secret"),
    "absolute hardlink": lambda t: _add(t, "hl", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    "character device": lambda t: _add(t, "null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    "block device": lambda t: _add(t, "sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
    "fifo": lambda t: _add(t, "pipe", type=tarfile.FIFOTYPE),
    "setuid file": lambda t: _add(t, "su", mode=0o4755, data=b"x"),
    "setgid directory": lambda t: _add(t, "d", type=tarfile.DIRTYPE, mode=0o2755),
}


#: the extraction guards this Python can run: our own checks alone (as on
#: Debian 12's Python 3.11.2), and ours with tarfile's filters where it has them
#: (3.11.4 and newer). A guard the Python lacks is not a case here, not a skip.
GUARD_MODES = ["own checks only (Python 3.11.2)"] + (
    ["own checks and tarfile filter"] if hasattr(tarfile, "data_filter") else []
)


@pytest.fixture(params=GUARD_MODES)
def guard_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each hostile case with every extraction guard this Python has."""
    if request.param.startswith("own checks only"):
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return str(request.param)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarballs_are_refused_with_nothing_written(
    tmp_path: Path, case: str, guard_mode: str
) -> None:
    tarball = tmp_path / "evil.tar"
    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "harmless.txt", data=b"fine")
        HOSTILE[case](tar)
        _add(tar, "after.txt", data=b"fine")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    dest = tmp_path / "deploy" / "dest"
    dest.mkdir(parents=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ArtifactError, match="refusing tar member") as caught:
        artifact.extract(str(tarball), str(dest), "v1")
    assert caught.value.path
    assert os.listdir(dest) == []
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not os.path.lexists("/tmp/fabmurder-evil")


def test_a_symlink_chain_that_resolves_outside_at_the_end_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "chain.tar"
    with tarfile.open(tarball, "w") as tar:
        # "b" points to a path through "a", which only later becomes "."
        _add(tar, "b", type=tarfile.SYMTYPE, linkname="a/..")
        _add(tar, "a", type=tarfile.SYMTYPE, linkname=".")
    dest = tmp_path / "dest"
    with pytest.raises(ArtifactError, match="outside"):
        artifact.extract(str(tarball), str(dest), "v1")
    assert os.listdir(dest) == []


def test_a_corrupt_tarball_is_an_artifact_error(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"\x01" * 2048)
    with pytest.raises(ArtifactError):
        artifact.extract(str(tmp_path / "bad.tar"), str(tmp_path / "dest"), "v1")
    assert not (tmp_path / "dest" / "v1").exists()


# -- the final path ----------------------------------------------------------


def test_an_existing_release_is_refused_and_left_untouched(tmp_path: Path) -> None:
    src = make_release_tree(tmp_path / "src")
    artifact.pack(str(src), str(tmp_path / "r.tar"))
    (tmp_path / "dest" / "v1").mkdir(parents=True)
    (tmp_path / "dest" / "v1" / "old").write_text("old release")
    with pytest.raises(ArtifactError, match="already exists"):
        artifact.extract(str(tmp_path / "r.tar"), str(tmp_path / "dest"), "v1")
    assert os.listdir(tmp_path / "dest" / "v1") == ["old"]
    assert os.listdir(tmp_path / "dest") == ["v1"]


def test_force_replaces_an_existing_release_and_leaves_no_leftovers(tmp_path: Path) -> None:
    src = make_release_tree(tmp_path / "src")
    artifact.pack(str(src), str(tmp_path / "r.tar"))
    (tmp_path / "dest" / "v1").mkdir(parents=True)
    (tmp_path / "dest" / "v1" / "old").write_text("old release")
    artifact.extract(str(tmp_path / "r.tar"), str(tmp_path / "dest"), "v1", force=True)
    assert tree_signature(tmp_path / "dest" / "v1") == tree_signature(src)
    assert os.listdir(tmp_path / "dest") == ["v1"]


def test_leftovers_of_a_killed_extraction_of_this_tag_are_removed(tmp_path: Path) -> None:
    src = make_release_tree(tmp_path / "src")
    artifact.pack(str(src), str(tmp_path / "r.tar"))
    dest = tmp_path / "dest"
    for name in [".v1.partial-abc", ".v1.old-def", ".v2.partial-xyz", ".v1x.partial-q"]:
        (dest / name / "half").mkdir(parents=True)
    artifact.extract(str(tmp_path / "r.tar"), str(dest), "v1")
    assert sorted(os.listdir(dest)) == [".v1x.partial-q", ".v2.partial-xyz", "v1"]


def test_a_release_too_big_for_the_disk_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_release_tree(tmp_path / "src")
    artifact.pack(str(src), str(tmp_path / "r.tar"))
    monkeypatch.setattr(artifact, "free_bytes", lambda path: 1000)
    with pytest.raises(ArtifactError, match="not enough space"):
        artifact.extract(str(tmp_path / "r.tar"), str(tmp_path / "dest"), "v1")
    assert os.listdir(tmp_path / "dest") == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> object:
    """Mount a 1 MiB tmpfs (needs root; fails rather than skips under CI)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    skip_unless(os.geteuid() == 0 and shutil.which("mount"), "needs root to mount a tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_fails_cleanly_with_nothing_half_written(
    tmp_path: Path, tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"part{i}").write_bytes(os.urandom(400_000))
    artifact.pack(str(src), str(tmp_path / "r.tar"))
    # Pretend the up-front check passed, so the write itself hits ENOSPC.
    monkeypatch.setattr(artifact, "free_bytes", lambda path: 1 << 40)
    with pytest.raises(ArtifactError, match="no space left"):
        artifact.extract(str(tmp_path / "r.tar"), str(tiny_disk), "v1")
    assert os.listdir(tiny_disk) == []


SYSTEM_PYTHON = "/usr/bin/python3"


def test_extraction_refuses_hostile_members_on_a_python_without_tarfile_filters(
    tmp_path: Path,
) -> None:
    """Run the checks under Debian's own Python 3.11.2 (no ``tarfile.data_filter``)."""
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import tarfile; print(hasattr(tarfile, 'data_filter'))"],
        capture_output=True,
        text=True,
        check=False,
    ) if os.path.exists(SYSTEM_PYTHON) else None  # fmt: skip
    skip_unless(
        probe is not None and probe.stdout.strip() == "False",
        f"no {SYSTEM_PYTHON} without tarfile filters here (Debian 12's is one)",
    )
    for case, build in HOSTILE.items():
        tarball = tmp_path / f"{case.replace(' ', '-')}.tar"
        with tarfile.open(tarball, "w") as tar:
            _add(tar, "harmless.txt", data=b"fine")
            build(tar)
    script = (
        "import sys, os, glob\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from fabmurder.host import artifact\n"
        "from fabmurder.errors import ArtifactError\n"
        "refused = 0\n"
        f"for tarball in sorted(glob.glob({str(tmp_path)!r} + '/*.tar')):\n"
        "    dest = tarball + '.dest'\n"
        "    try:\n"
        "        artifact.extract(tarball, dest, 'v1')\n"
        "    except ArtifactError:\n"
        "        refused += 1 if os.listdir(dest) == [] else 0\n"
        "print(refused)\n"
    )
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(HOSTILE)
    assert not os.path.lexists("/tmp/fabmurder-evil")
