"""known_hosts at scale: read once per run, one host's keys per connection.

Unit tests: no host is contacted (a pool checks host keys when it makes a
connection, before the first command). The real check against real sshd
hosts (an unknown or changed key is refused) is in test_reliability_trust.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import paramiko
import pytest
from invoke import Context

from fabmurder import known_hosts
from fabmurder.known_hosts import KnownHosts, key_name
from fabmurder.remote import ConnectionPool

HOSTS = 5000


def keys(count: int) -> list[paramiko.PKey]:
    """``count`` distinct public keys (the same few bytes would do for paramiko's parser)."""
    out = []
    for i in range(count):
        blob = paramiko.Message()
        blob.add_string("ssh-ed25519")
        blob.add_string(hashlib.sha256(str(i).encode()).digest())
        out.append(paramiko.Ed25519Key(data=blob.asbytes()))
    return out


def write_known_hosts(path: Path, count: int) -> list[paramiko.PKey]:
    found = keys(count)
    lines = [
        f"10.{i // 65536}.{i // 256 % 256}.{i % 256} {k.get_name()} {k.get_base64()}"
        for i, k in enumerate(found)
    ]
    path.write_text("# a fleet's known hosts\n" + "\n".join(lines) + "\n")
    return found


def count_parsed_lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on known_hosts' line parser: return the list every parsed line is added to."""
    parsed: list[str] = []
    real = known_hosts.HostKeyEntry.from_line

    def counting(line: str, lineno: int | None = None) -> object:
        parsed.append(line)
        return real(line, lineno)

    monkeypatch.setattr(known_hosts.HostKeyEntry, "from_line", staticmethod(counting))
    return parsed


def test_a_5000_line_known_hosts_is_read_once_for_a_whole_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "known_hosts"
    found = write_known_hosts(path, HOSTS)
    parsed = count_parsed_lines(monkeypatch)
    monkeypatch.setattr(paramiko.HostKeys, "load", lambda *a: pytest.fail("HostKeys.load ran"))
    pool = ConnectionPool(Context().config, known_hosts=(str(path),))
    chosen = list(range(0, HOSTS, 25))  # 200 connections
    conns = [pool.get(f"root@10.{i // 65536}.{i // 256 % 256}.{i % 256}:2222") for i in chosen]
    assert len(parsed) == HOSTS  # once, not once per connection
    for i, conn in zip(chosen, conns, strict=True):
        name = key_name(conn.host, conn.port)
        assert name == f"[10.{i // 65536}.{i // 256 % 256}.{i % 256}]:2222"
    # A port other than 22 files the key under [host]:port: these hosts are unknown ...
    assert all(len(conn.client.get_host_keys()) == 0 for conn in conns)
    # ... and on port 22 each connection holds its own host's key, and only that one.
    on_22 = [pool.get(f"root@10.0.{i // 256 % 256}.{i % 256}") for i in (7, 300, 4999)]
    for i, conn in zip((7, 300, 4999), on_22, strict=True):
        held = conn.client.get_host_keys()
        assert list(held.keys()) == [conn.host]
        assert held[conn.host]["ssh-ed25519"] == found[i]
    assert len(parsed) == HOSTS
    assert isinstance(conns[0].client._policy, paramiko.RejectPolicy)


def test_hashed_entries_match_by_hmac_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    key, other = keys(2)
    salt = b"0123456789abcdef0123"
    digest = hmac.new(salt, b"web1.example", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    path = tmp_path / "known_hosts"
    path.write_text(
        f"{hashed} ssh-ed25519 {key.get_base64()}\n"
        "this is not a known_hosts line\n"
        f"@revoked * ssh-ed25519 {other.get_base64()}\n"
        f"web2.example,10.0.0.2 ssh-ed25519 {other.get_base64()}\n"
    )
    known = KnownHosts.load([str(path), str(tmp_path / "missing")])
    assert known.lines == 2
    assert known.find("web1.example") == {"ssh-ed25519": key}
    assert known.find("10.0.0.2") == known.find("web2.example") == {"ssh-ed25519": other}
    assert known.find("web3.example") == {}
