"""Filling a tree release from older ones: what ``reuse`` places, and what it never does."""

from __future__ import annotations

import os
from pathlib import Path

from fabmurder.contract import manifest_record, marker
from fabmurder.host import manifest, reuse


def release(dest: Path, tag: str, files: dict[str, bytes], age: float) -> None:
    """Install ``files`` as tree release ``tag`` under ``dest``, as a peer would leave it."""
    root = dest / tag
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    tree = manifest.scan(str(root))
    (dest / manifest_record(tag)).write_bytes(manifest.pack(tree))
    (dest / marker(tag)).write_text(manifest.digest(tree) + "\n")
    os.utime(dest / manifest_record(tag), (age, age))


def test_a_source_of_another_size_is_refused_unless_any_size_will_do(tmp_path: Path) -> None:
    source = tmp_path / "old"
    source.write_bytes(b"a" * 100)
    assert reuse.place(str(source), str(tmp_path / "exact"), 90) is None
    assert not (tmp_path / "exact").exists()
    assert reuse.place(str(source), str(tmp_path / "cut"), 90, exact=False) is not None
    assert (tmp_path / "cut").read_bytes() == b"a" * 90
    assert reuse.place(str(source), str(tmp_path / "grown"), 120, exact=False) is not None
    assert (tmp_path / "grown").read_bytes() == b"a" * 100 + bytes(20)
    # A copy (or reflink), never a hard link; a symlink is never followed.
    assert source.stat().st_nlink == 1 and (tmp_path / "cut").stat().st_nlink == 1
    os.symlink(source, tmp_path / "link")
    assert reuse.place(str(tmp_path / "link"), str(tmp_path / "via"), 100) is None


def test_a_file_is_filled_by_root_anywhere_else_by_its_path_in_the_newest_release(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "releases"
    release(dest, "r1", {"lib/a.so": b"A" * 5000, "lib/b.so": b"old b, r1"}, age=1000)
    release(dest, "r2", {"moved/a.so": b"A" * 5000, "lib/b.so": b"old b, r2!"}, age=2000)
    new = tmp_path / "new"
    (new / "lib").mkdir(parents=True)
    (new / "lib" / "a.so").write_bytes(b"A" * 5000)
    (new / "lib" / "b.so").write_bytes(b"new b, changed inside")
    tree = manifest.scan(str(new))
    stage = tmp_path / "stage"
    (stage / "lib").mkdir(parents=True)
    sources = reuse.index(str(dest))
    assert sources.paths["lib/b.so"][0] == str(dest / "r2" / "lib" / "b.so")
    filled = reuse.prefill(tree, str(stage), sources)
    assert (filled.files, filled.bytes, filled.by_path) == (1, 5000, 1)
    assert (stage / "lib" / "a.so").read_bytes() == b"A" * 5000
    # Started from r2's copy at its new size; libtorrent fetches the pieces that differ.
    assert (stage / "lib" / "b.so").read_bytes() == b"old b, r2!" + bytes(11)
