"""The manifest of a tree release: scanning, canonical bytes, and refusing hostile entries."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from fabmurder.errors import ArtifactError
from fabmurder.host import manifest


def top(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"format": 1, "entries": [{"path": ".", "type": "dir", "mode": 0o755}, *entries]}


def file(path: str, mode: int = 0o644) -> dict[str, Any]:
    return {"path": path, "type": "file", "mode": mode, "size": 3, "root": "ab" * 32}


def link(path: str, target: str) -> dict[str, Any]:
    return {"path": path, "type": "link", "mode": 0o777, "target": target}


def folder(path: str) -> dict[str, Any]:
    return {"path": path, "type": "dir", "mode": 0o755}


def refused(m: dict[str, Any]) -> str:
    with pytest.raises(ArtifactError) as info:
        manifest.validate(m)
    return str(info.value)


def test_a_file_root_is_the_bep52_merkle_root_of_its_16k_blocks(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.write_bytes(b"x" * 100)
    assert manifest.merkle_root(str(one)) == hashlib.sha256(b"x" * 100).hexdigest()
    three = tmp_path / "three"
    blocks = [bytes([i]) * manifest.MERKLE_BLOCK for i in range(3)]
    three.write_bytes(b"".join(blocks))
    leaves = [hashlib.sha256(b).digest() for b in blocks] + [bytes(32)]
    pair = hashlib.sha256
    root = pair(pair(leaves[0] + leaves[1]).digest() + pair(leaves[2] + leaves[3]).digest())
    assert manifest.merkle_root(str(three)) == root.hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert manifest.merkle_root(str(tmp_path / "empty")) is None


def test_scan_lists_every_path_with_type_mode_target_and_root(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "run").write_bytes(b"#!/bin/sh\n")
    os.chmod(tmp_path / "bin" / "run", 0o750)
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "empty-file").write_bytes(b"")
    os.symlink("bin/run", tmp_path / "run")
    m = manifest.scan(str(tmp_path))
    by_path = {e["path"]: e for e in m["entries"]}
    assert [e["path"] for e in m["entries"]] == sorted(by_path)
    assert by_path["bin/run"] == {
        "path": "bin/run",
        "type": "file",
        "mode": 0o750,
        "size": 10,
        "root": hashlib.sha256(b"#!/bin/sh\n").hexdigest(),
    }
    assert by_path["empty-dir"]["type"] == "dir"
    assert by_path["empty-file"] == {
        "path": "empty-file",
        "type": "file",
        "mode": 0o644,
        "size": 0,
        "root": None,
    }
    assert by_path["run"]["target"] == "bin/run"
    assert manifest.validate(m) is m
    assert [e["path"] for e in manifest.files(m)] == ["bin/run"]


def test_scan_refuses_a_setuid_file_and_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "su").write_bytes(b"x")
    os.chmod(tmp_path / "su", 0o4755)
    with pytest.raises(ArtifactError, match="setuid/setgid"):
        manifest.scan(str(tmp_path))
    os.unlink(tmp_path / "su")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ArtifactError, match="not a regular file"):
        manifest.scan(str(tmp_path))


def test_the_digest_is_the_sha256_of_the_canonical_bytes_and_survives_the_wire() -> None:
    m = top(folder("a"), file("a/b"))
    assert manifest.digest(m) == hashlib.sha256(manifest.encode(m)).hexdigest()
    assert manifest.unpack(manifest.pack(m)) == m
    # The same manifest in another key order or spacing is not canonical: refused.
    loose = zlib.compress(b'{"entries":[{"type":"dir","path":".","mode":493}],"format":1}')
    with pytest.raises(ArtifactError, match="canonical"):
        manifest.unpack(loose)


def test_a_manifest_that_inflates_beyond_the_limit_is_refused(monkeypatch: Any) -> None:
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(ArtifactError, match="larger than the limit"):
        manifest.unpack(zlib.compress(b" " * 5000))
    with pytest.raises(ArtifactError, match="malformed manifest"):
        manifest.unpack(b"not zlib")


def test_dot_dot_is_refused() -> None:
    assert "'..' in path" in refused(top(file("../etc/passwd")))
    assert "'..' in path" in refused(top(folder("a"), file("a/../../x")))


def test_an_absolute_path_is_refused() -> None:
    assert "absolute path" in refused(top(file("/etc/passwd")))


def test_a_symlink_leaving_the_release_is_refused() -> None:
    assert "leaves the release" in refused(top(link("up", "..")))
    assert "absolute symlink target" in refused(top(link("etc", "/etc")))
    # Through another symlink: each hop stays inside, the pair does not.
    assert "leaves the release" in refused(
        top(folder("a"), link("a/up", ".."), link("out", "a/up/.."))
    )
    # A loop never resolves.
    assert "leaves the release" in refused(top(link("x", "y"), link("y", "x")))
    # Inside is fine, even dangling.
    manifest.validate(top(folder("a"), link("a/self", "../a"), link("gone", "a/nothing")))


def test_duplicate_paths_are_refused() -> None:
    assert "duplicate path" in refused(top(file("a"), file("a")))
    assert "duplicate path" in refused(top(folder("a"), file("a")))


def test_a_file_under_a_symlinked_path_is_refused() -> None:
    message = refused(top(link("lib", "/tmp"), file("lib/evil")))
    assert "absolute symlink target" in message or "which is a symlink" in message
    assert "which is a symlink" in refused(top(folder("real"), link("lib", "real"), file("lib/x")))


def test_a_path_whose_parent_is_missing_or_a_file_is_refused() -> None:
    assert "is not a directory of the release" in refused(top(file("a/b")))
    assert "is not a directory of the release" in refused(top(file("a"), file("a/b")))


def test_setuid_and_setgid_modes_are_refused() -> None:
    assert "setuid/setgid" in refused(top(file("su", mode=0o4755)))
    assert "setuid/setgid" in refused(top(folder("g") | {"mode": 0o2775}))


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([{"path": "x", "type": "fifo", "mode": 0o644}], "unknown type"),
        ([{"path": "x", "type": "file", "mode": 0o644, "size": -1, "root": None}], "size"),
        ([{"path": "x", "type": "file", "mode": 0o644, "size": 3, "root": "zz"}], "root"),
        ([{"path": "x", "type": "file", "mode": 0o644, "size": 0, "root": "ab" * 32}], "no root"),
        ([{"path": "x", "type": "dir", "mode": 0o755, "owner": "root"}], "unknown fields"),
        ([{"path": "a//b", "type": "dir", "mode": 0o755}], "normalised"),
        ([{"path": "x", "type": "dir", "mode": 0o17777}], "invalid mode"),
        ([{"path": "", "type": "dir", "mode": 0o755}], "empty or invalid path"),
    ],
)
def test_malformed_entries_are_refused(entries: list[dict[str, Any]], why: str) -> None:
    assert why in refused(top(*entries))


def test_a_manifest_without_its_top_directory_is_refused() -> None:
    assert "'.' is missing" in refused({"format": 1, "entries": [file("a")]})
    assert "format-1" in refused({"format": 2, "entries": []})


def test_first_difference_names_the_path_and_the_fields() -> None:
    a = top(file("x"), file("y"))
    b = top(file("x", mode=0o600), file("z"))
    assert manifest.first_difference(a, a) is None
    assert manifest.first_difference(a, b) == "'x' differs in mode"
    assert manifest.first_difference(top(file("y")), top()) == "'y' is missing"
