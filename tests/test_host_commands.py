"""The small host commands: allow, stats, status, clean and finish."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fabmurder.errors import ConfigError, MurderError
from fabmurder.host import allowlist, clean, daemon, finish
from fabmurder.testing.hostcli import run as fab

# -- allow -----------------------------------------------------------------------


def test_allow_adds_and_removes_info_hashes_atomically_and_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "tracker.allow"
    a, b = "ab" * 20, "CD" * 20
    assert json.loads(fab("allow", "--file", str(path), "--add", a).stdout)["changed"] is True
    assert json.loads(fab("allow", "--file", str(path), "--add", b).stdout)["changed"] is True
    assert json.loads(fab("allow", "--file", str(path), "--add", a).stdout)["changed"] is False
    assert path.read_text() == f"{a}\n{b.lower()}\n"
    inode = path.stat().st_ino
    out = json.loads(fab("allow", "--file", str(path), "--remove", a).stdout)
    assert out["hashes"] == [b.lower()]
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("bad", ["abc", "g" * 40, "ab" * 20 + "\nffff", ""])
def test_allow_refuses_anything_but_forty_hex_digits(tmp_path: Path, bad: str) -> None:
    result = fab("allow", "--file", str(tmp_path / "a"), "--add", bad)
    assert result.returncode == 2
    assert not (tmp_path / "a").exists()


def test_concurrent_allow_edits_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "tracker.allow")
    hashes = [f"{i:040x}" for i in range(40)]
    threads = [threading.Thread(target=allowlist.update, args=(path, h)) for h in hashes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(allowlist.read_hashes(path)) == hashes
    with pytest.raises(ConfigError):
        allowlist.update(path, add="zz")


# -- stats -----------------------------------------------------------------------


@pytest.fixture
def json_server() -> Iterator[str]:
    """A loopback HTTP server answering /stats with JSON and /bad with text."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"swarms": {}}' if self.path == "/stats" else b"<html>"
            self.send_response(200 if self.path in ("/stats", "/bad") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_stats_prints_the_trackers_json(json_server: str) -> None:
    result = fab("stats", "--url", json_server + "/stats")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"swarms": {}}


@pytest.mark.parametrize("path", ["/bad", "/missing"])
def test_stats_fails_in_one_sentence_on_a_bad_answer(json_server: str, path: str) -> None:
    result = fab("stats", "--url", json_server + path)
    assert result.returncode == 1
    assert result.stderr.startswith("fabmurder: ")
    assert "Traceback" not in result.stderr


# -- status and clean ------------------------------------------------------------


def _status_doc(state: str = "seeding") -> dict[str, object]:
    return {
        "role": "peer", "tag": "v1", "info_hash": "ab" * 20, "pid": 4242, "state": state,
        "installed": True, "error": None, "total": 10, "done": 10, "uploaded": 0,
        "from_seeder": 10, "from_peers": 0, "hash_failures": 0, "peers": 1,
        "started_at": 1.0, "downloaded_at": 2.0, "installed_at": 3.0, "updated_at": 4.0,
    }  # fmt: skip


def populate(temp: Path) -> None:
    temp.mkdir(parents=True, exist_ok=True)
    for name in ["v1.tar", "v1.torrent", "peer-v1.log", "peer-v1.pid", "v2.tar", "seed-v2.log",
                 "tracker.log", "tracker.allow", "v1.tar.tmp-abc123", "notes.txt"]:  # fmt: skip
        (temp / name).write_text("x")
    (temp / "peer-v1.pid").write_text(json.dumps({"pid": 999999, "starttime": 1}))
    (temp / "peer-v1.status.json").write_text(json.dumps(_status_doc()))
    (temp / "seed-v2.status.json").write_text("{not json")


def test_status_reports_daemons_agents_and_releases(tmp_path: Path) -> None:
    temp, dest = tmp_path / "tmp", tmp_path / "dest"
    populate(temp)
    (dest / "v1").mkdir(parents=True)
    (dest / ".v2.partial-xyz").mkdir()
    result = fab("status", "--temp-path", str(temp), "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["daemons"]["peer-v1"]["alive"] is False
    assert out["agents"]["peer-v1"]["state"] == "seeding"
    assert "error" in out["agents"]["seed-v2"]
    assert out["releases"] == ["v1"]
    assert out["partials"] == [".v2.partial-xyz"]


def test_clean_removes_only_one_tags_files_inside_temp_path(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    populate(temp)
    out = json.loads(fab("clean", "--temp-path", str(temp), "--tag", "v1").stdout)
    assert sorted(out["removed"]) == sorted(
        ["v1.tar", "v1.torrent", "peer-v1.log", "peer-v1.pid", "peer-v1.status.json",
         "v1.tar.tmp-abc123"]
    )  # fmt: skip
    assert sorted(os.listdir(temp)) == sorted(
        ["v2.tar", "seed-v2.log", "seed-v2.status.json", "tracker.log", "tracker.allow",
         "notes.txt"]
    )  # fmt: skip


def test_clean_without_a_tag_removes_every_fabmurder_file_but_nothing_else(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    populate(temp)
    outside = tmp_path / "keep.tar"
    outside.write_text("not in temp_path")
    (temp / "link.tar").symlink_to(outside)
    (temp / "dir.tar").mkdir()
    out = json.loads(fab("clean", "--temp-path", str(temp)).stdout)
    assert "link.tar" in out["removed"]
    assert sorted(os.listdir(temp)) == ["dir.tar", "notes.txt"]
    assert outside.read_text() == "not in temp_path"
    assert temp.is_dir()


def test_clean_refuses_a_tag_whose_agent_still_runs(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    populate(temp)
    # A real fabmurder daemon holds the peer-v1 PID file.
    started = fab(
        "daemon", "start", "--pid-file", str(temp / "peer-v1.pid"), "--log",
        str(temp / "peer-v1.log"), "--", "tracker", "--bind", "127.0.0.1", "--port", "0",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        result = fab("clean", "--temp-path", str(temp), "--tag", "v1")
        assert result.returncode == 1
        assert "still has a running seeder or peer" in result.stderr
        assert (temp / "v1.tar").exists()
        everything = json.loads(fab("clean", "--temp-path", str(temp)).stdout)
        assert "v1.tar" in everything["kept"] and (temp / "peer-v1.pid").exists()
        assert "v2.tar" in everything["removed"]
    finally:
        fab("daemon", "stop", "--pid-file", str(temp / "peer-v1.pid"))


def test_clean_of_a_missing_temp_path_does_nothing(tmp_path: Path) -> None:
    assert clean.clean(str(tmp_path / "nope"))["removed"] == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(MurderError, match="not a directory"):
        clean.clean(str(tmp_path / "file"))


# -- finish ----------------------------------------------------------------------


def start_daemon(temp: Path, stem: str) -> int:
    """Start a real fabmurder daemon (a tracker: quick to start) under ``<stem>.pid``."""
    started = fab(
        "daemon", "start", "--pid-file", str(temp / f"{stem}.pid"), "--log",
        str(temp / f"{stem}.log"), "--", "tracker", "--bind", "127.0.0.1", "--port", "0",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    return int(json.loads(started.stdout)["pid"])


def test_finish_stops_the_roles_agents_of_one_tag_and_cleans_its_files(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    populate(temp)
    peer = start_daemon(temp, "peer-v1")
    other = start_daemon(temp, "peer-v2")
    seed = start_daemon(temp, "seed-v1")
    try:
        result = fab("finish", "--temp-path", str(temp), "--role", "peer", "--tag", "v1", "--clean")
        # The seed-v1 agent still runs, so the release's files must stay: exit 1, nothing lost.
        assert result.returncode == 1
        out = json.loads(result.stdout)
        assert [(Path(r["pid_file"]).name, r["pid"]) for r in out["stopped"]] == [
            ("peer-v1.pid", peer)
        ]
        assert "still has a running seeder or peer" in out["error"] in result.stderr
        assert daemon.proc_starttime(peer) is None or daemon._is_zombie(peer)
        assert (temp / "v1.tar").exists()
        out = finish_v1(temp)
        assert [r["pid"] for r in out["stopped"] if r["stopped"]] == [seed]
        assert "v1.tar" in out["clean"]["removed"] and not (temp / "v1.tar").exists()
        # another release's agent and files, and the tracker's, are untouched
        assert daemon.is_ours(daemon.read_pid_file(str(temp / "peer-v2.pid")))
        assert (temp / "v2.tar").exists() and (temp / "tracker.allow").exists()
    finally:
        for stem in ("peer-v1", "peer-v2", "seed-v1"):
            fab("daemon", "stop", "--pid-file", str(temp / f"{stem}.pid"))
    assert daemon.proc_starttime(other) is None or daemon._is_zombie(other)


def finish_v1(temp: Path) -> dict[str, Any]:
    """Run ``finish --clean`` for release v1's seed and peer in ``temp``; return its reply."""
    result = fab(
        "finish", "--temp-path", str(temp), "--role", "seed", "--role", "peer",
        "--tag", "v1", "--clean",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def test_finish_returns_each_agents_last_status_read_before_the_clean_removes_it(
    tmp_path: Path,
) -> None:
    temp = tmp_path / "tmp"
    populate(temp)
    (temp / "peer-v1.pid").unlink()  # the peer agent has ended by itself
    out = finish_v1(temp)
    assert out["statuses"]["peer"] == {"status": _status_doc(), "error": None}
    assert out["statuses"]["seed"]["status"] is None
    assert "cannot read status file" in out["statuses"]["seed"]["error"]
    assert "peer-v1.status.json" in out["clean"]["removed"]
    assert not (temp / "peer-v1.status.json").exists()
    # without --tag (a stop task) no status is read
    untagged = json.loads(fab("finish", "--temp-path", str(temp), "--role", "peer").stdout)
    assert "statuses" not in untagged


def test_finish_picks_pid_files_by_role_and_tag_only(tmp_path: Path) -> None:
    names = ["tracker.pid", "peer-v1.pid", "peer-v1.2.pid", "seed-v1.pid", "peer-v1.log",
             "peer-v1.pid.tmp-ab12", "notes.pid", "peer-v1.status.json"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_text("x")

    def picked(roles: list[str], tag: str | None) -> list[str]:
        return [Path(p).name for p in finish.pid_files(str(tmp_path), roles, tag)]

    assert picked(["peer"], "v1") == ["peer-v1.pid"]
    assert picked(["peer"], None) == ["peer-v1.2.pid", "peer-v1.pid"]
    assert picked(["tracker"], None) == ["tracker.pid"]
    assert picked(["seed", "peer"], "v1.2") == ["peer-v1.2.pid"]
    assert finish.pid_files(str(tmp_path / "gone"), ["peer"], None) == []


def test_finish_refuses_clean_without_a_tag_and_bad_tags(tmp_path: Path) -> None:
    result = fab("finish", "--temp-path", str(tmp_path), "--role", "peer", "--clean")
    assert result.returncode == 2 and "--clean needs --tag" in result.stderr
    result = fab("finish", "--temp-path", str(tmp_path), "--role", "peer", "--tag", "../x")
    assert result.returncode == 2 and "invalid release tag" in result.stderr
