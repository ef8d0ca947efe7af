"""Creating release torrents and reading torrent files with suspicion."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import bencodepy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabmurder.errors import TorrentError
from fabmurder.host import metainfo

ANNOUNCE = "http://127.0.0.1:8998/announce"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, metainfo.Metainfo]:
    """A 300 kB tarball stand-in and its torrent."""
    root = tmp_path_factory.mktemp("meta")
    (root / "v1.tar").write_bytes(os.urandom(300_000))
    meta = metainfo.create(str(root / "v1.tar"), str(root / "v1.torrent"), ANNOUNCE, 65536)
    return root, meta


def test_a_created_torrent_is_v1_single_file_named_after_the_tarball(
    release: tuple[Path, metainfo.Metainfo],
) -> None:
    root, meta = release
    decoded = bencodepy.decode((root / "v1.torrent").read_bytes())
    info = decoded[b"info"]
    assert info[b"name"] == b"v1.tar"
    assert info[b"length"] == 300_000
    assert info[b"piece length"] == 65536
    assert b"files" not in info and b"meta version" not in info
    assert decoded[b"announce"] == ANNOUNCE.encode()
    assert meta.info_hash == hashlib.sha1(bencodepy.encode(info)).hexdigest()
    assert meta.num_pieces == 5
    assert [p.name for p in root.iterdir() if ".tmp-" in p.name] == []


def test_reading_checks_the_tag_and_the_info_hash(release: tuple[Path, metainfo.Metainfo]) -> None:
    root, meta = release
    path = str(root / "v1.torrent")
    assert metainfo.read(path, tag="v1", info_hash=meta.info_hash.upper()).size == 300_000
    with pytest.raises(TorrentError, match="not release 'v2'"):
        metainfo.read(path, tag="v2")
    with pytest.raises(TorrentError, match="does not match"):
        metainfo.read(path, info_hash="0" * 40)


@pytest.mark.parametrize("piece_size", [0, 1000, 8192, 3 * 65536, 32 * 1024 * 1024])
def test_bad_piece_sizes_are_refused(
    release: tuple[Path, metainfo.Metainfo], piece_size: int
) -> None:
    root, _ = release
    with pytest.raises(TorrentError, match="power of two"):
        metainfo.create(str(root / "v1.tar"), str(root / "x.torrent"), ANNOUNCE, piece_size)
    assert not (root / "x.torrent").exists()


def test_a_missing_torrent_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TorrentError, match="cannot read torrent"):
        metainfo.read(str(tmp_path / "nope.torrent"))


def _mutate(raw: bytes, path: list[bytes], value: object) -> bytes:
    decoded = bencodepy.decode(raw)
    node = decoded
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return bencodepy.encode(decoded)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ([b"info"], None, "'info'"),
        ([b"info", b"name"], b"../../etc/passwd", "unsafe file name"),
        ([b"info", b"name"], 7, "'info.name'"),
        ([b"info", b"length"], -5, "not positive"),
        ([b"info", b"piece length"], 12345, "power of two"),
        ([b"info", b"pieces"], b"x" * 21, "piece hashes"),
        ([b"info", b"files"], [{b"length": 1, b"path": [b"a"]}], "exactly one file"),
        ([b"info", b"meta version"], 2, "v1 only"),
    ],
)
def test_malformed_torrents_are_refused_with_a_sentence_not_a_traceback(
    release: tuple[Path, metainfo.Metainfo], path: list[bytes], value: object, message: str
) -> None:
    root, meta = release
    with pytest.raises(TorrentError, match=message):
        metainfo.parse(_mutate(meta.raw, path, value))


def test_the_command_line_prints_one_sentence_for_a_malformed_torrent(tmp_path: Path) -> None:
    (tmp_path / "v1.torrent").write_bytes(b"d4:infod4:name6:v1.tare")
    (tmp_path / "s").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "fabmurder", "peer", "--torrent", str(tmp_path / "v1.torrent"),
         "--save-path", str(tmp_path), "--bind", "127.0.0.1", "--port", "0",
         "--status-file", str(tmp_path / "s" / "st.json"), "--sha256", "0" * 64,
         "--dest", str(tmp_path / "d"), "--tag", "v1", "--timeout", "5", "--seed-after", "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "malformed torrent" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "d").exists()
    # Nothing useful happened, and no status claims otherwise.
    assert (
        os.listdir(tmp_path / "s") == []
        or json.loads((tmp_path / "s" / "st.json").read_text())["state"] == "failed"
    )


# -- fuzzing -------------------------------------------------------------------
#: cases per property; the CI count is reported in docs/tuning.md and the report
FUZZ_CASES = 400


@settings(max_examples=FUZZ_CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600))
def test_parsing_random_bytes_returns_or_raises_torrent_error(data: bytes) -> None:
    try:
        meta = metainfo.parse(data)
    except TorrentError:
        return
    assert len(meta.info_hash) == 40


@settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_parsing_mutated_torrents_returns_or_raises_torrent_error(
    release: tuple[Path, metainfo.Metainfo], data: st.DataObject
) -> None:
    raw = bytearray(release[1].raw)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 40))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=20))
    try:
        meta = metainfo.parse(bytes(raw))
    except TorrentError:
        return
    # Whatever parses must be internally consistent.
    assert meta.num_pieces == -(-meta.size // meta.piece_size)
    assert "/" not in meta.name
