"""The wheel cache: a wheel is reused only when it is the one fabmurder made or fetched (#12).

A file with the right name and other bytes (repacked, swapped, truncated) is
never shipped: it is made again from the installed distribution.
"""

from __future__ import annotations

from pathlib import Path

from fabmurder import install


def test_a_cached_wheel_swapped_under_its_name_is_rebuilt_not_shipped(tmp_path: Path) -> None:
    first = install.repack_installed("bencode.py", tmp_path)
    genuine = first.read_bytes()
    assert install._verified(first)
    assert install.repack_installed("bencode.py", tmp_path) == first  # reused as it is
    first.write_bytes(b"PK\x03\x04 an attacker's wheel")
    assert not install._verified(first)
    again = install.repack_installed("bencode.py", tmp_path)
    assert again == first and again.read_bytes() == genuine


def test_a_wheel_with_no_record_is_not_trusted_by_its_name(tmp_path: Path) -> None:
    planted = tmp_path / "bencode.py-4.0.0-py2.py3-none-any.whl"
    planted.write_bytes(b"anything")
    assert not install._verified(planted)
    (tmp_path / install.SUMS).write_text(f"{'0' * 64}  {planted.name}\n")
    assert not install._verified(planted)  # a record that does not match counts for nothing
