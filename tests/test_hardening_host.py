"""Host-side hardening: what another local user plants in fabmurder's directories gets them nothing.

What is hashed is what is extracted. The attack: whoever can write the
directory that holds the downloaded tarball renames another tarball over it
between the SHA-256 check and the extraction. The peer then installs the
attacker's tree under a marker that records the genuine digest. The check
and the extraction now read one open file, which a rename cannot change.

A daemon's log is opened without following a symlink, and is private.
``temp_path`` must be the deploy user's own (fabmurder.host.privatedir):
another owner, group or world write, a symlink, an unsafe directory above
it, or a shared system directory are refused before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_host_artifact import make_release_tree, tree_signature

from fabmurder.errors import ArtifactError
from fabmurder.host import artifact
from fabmurder.testing.hostcli import run as fab


def packed(tmp_path: Path, name: str, payload: str) -> tuple[Path, Path, str]:
    src = make_release_tree(tmp_path / f"src-{name}")
    (src / "app.txt").write_text(payload)
    out = tmp_path / f"{name}.tar"
    return src, out, artifact.pack(str(src), str(out)).sha256


def test_a_tarball_swapped_after_its_check_is_not_what_gets_installed(tmp_path: Path) -> None:
    genuine_src, genuine, digest = packed(tmp_path, "genuine", "the real release\n")
    evil_src, evil, _ = packed(tmp_path, "evil", "the attacker's tree\n")
    with artifact.open_verified(str(genuine), digest) as checked:
        os.replace(evil, genuine)  # the swap, between check and extraction
        final = artifact.extract(checked, str(tmp_path / "dest"), "v1", sha256=digest)
    assert tree_signature(Path(final)) == tree_signature(genuine_src)
    assert tree_signature(Path(final)) != tree_signature(evil_src)
    assert artifact.installed_sha256(str(tmp_path / "dest"), "v1") == digest


def test_the_check_refuses_a_symlink_a_directory_and_a_wrong_digest(tmp_path: Path) -> None:
    _, genuine, digest = packed(tmp_path, "genuine", "x\n")
    link = tmp_path / "link.tar"
    link.symlink_to(genuine)
    with pytest.raises(ArtifactError, match="cannot open tarball"):
        artifact.open_verified(str(link), digest)
    (tmp_path / "dir.tar").mkdir()
    with pytest.raises(ArtifactError, match="not a regular file|cannot open"):
        artifact.open_verified(str(tmp_path / "dir.tar"), digest)
    with pytest.raises(ArtifactError, match="SHA-256 mismatch"):
        artifact.open_verified(str(genuine), "0" * 64)
    with pytest.raises(ArtifactError, match="not 64 hex digits"):
        artifact.open_verified(str(genuine), "xyz")


def test_a_symlink_planted_at_a_daemons_log_name_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    log = tmp_path / "peer-v1.log"
    log.symlink_to(victim)
    result = fab(
        "daemon", "start", "--pid-file", str(tmp_path / "x.pid"), "--log", str(log),
        "--ready-timeout", "5", "--", "tracker", "--bind", "127.0.0.1", "--port", "0",
    )  # fmt: skip
    assert result.returncode == 1
    assert "symlink" in result.stderr
    assert victim.read_text() == "precious\n"
    assert (victim.stat().st_mode & 0o777) == 0o644
    assert not (tmp_path / "x.pid").exists()


def test_a_daemons_log_is_private_to_the_deploy_user(tmp_path: Path) -> None:
    pid_file, log = tmp_path / "t.pid", tmp_path / "t.log"
    started = fab(
        "daemon", "start", "--pid-file", str(pid_file), "--log", str(log), "--",
        "tracker", "--bind", "127.0.0.1", "--port", "0",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        assert (log.stat().st_mode & 0o777) == 0o600
    finally:
        assert fab("daemon", "stop", "--pid-file", str(pid_file)).returncode == 0


STRANGER = 54321  # a uid no account has: "another local user"


def start_tracker_daemon(temp: Path) -> subprocess.CompletedProcess[str]:
    return fab(
        "daemon", "start", "--pid-file", str(temp / "tracker.pid"), "--log",
        str(temp / "tracker.log"), "--ready-timeout", "10", "--", "tracker", "--bind",
        "127.0.0.1", "--port", "0",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("plant", "why"),
    [
        (lambda d: (d.mkdir(), os.chown(d, STRANGER, STRANGER)), "belongs to uid 54321"),
        (lambda d: (d.mkdir(), d.chmod(0o777)), "writable by other users"),
        (lambda d: (d.mkdir(mode=0o700), d.chmod(0o720)), "writable by other users"),
        (lambda d: (d.parent.joinpath("elsewhere").mkdir(), d.symlink_to("elsewhere")), "symlink"),
    ],
    ids=["another-owner", "world-writable", "group-writable", "symlink"],
)
def test_a_temp_path_someone_else_could_control_is_refused_before_anything_is_written(
    tmp_path: Path, plant: Callable[[Path], object], why: str, require_root: None
) -> None:
    temp = tmp_path / "fabmurder"
    plant(temp)
    before = sorted(p.name for p in temp.iterdir()) if temp.is_dir() else None
    result = start_tracker_daemon(temp)
    assert result.returncode == 1
    assert why in result.stderr
    after = sorted(p.name for p in temp.iterdir()) if temp.is_dir() else None
    assert after == before == []
    elsewhere = tmp_path / "elsewhere"
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []


def test_a_directory_above_temp_path_that_others_may_write_is_refused(
    tmp_path: Path, require_root: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by all and not sticky: our entry could be swapped
    result = start_tracker_daemon(shared / "fabmurder")
    assert result.returncode == 1
    assert f"{shared} is writable by other users" in result.stderr
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)  # sticky, as /tmp is: others cannot rename what is ours
    result = start_tracker_daemon(shared / "fabmurder")
    assert result.returncode == 0, result.stderr
    assert (
        fab("daemon", "stop", "--pid-file", str(shared / "fabmurder/tracker.pid")).returncode == 0
    )


def test_temp_path_is_made_0700_and_an_existing_one_of_ours_is_made_private(
    tmp_path: Path,
) -> None:
    made = tmp_path / "a" / "b" / "fabmurder"
    out = fab("allow", "--file", str(made / "tracker.allow"), "--add", "ab" * 20)
    assert out.returncode == 0, out.stderr
    for directory in (made, made.parent, made.parent.parent):
        assert (directory.stat().st_mode & 0o777) == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    out = fab("allow", "--file", str(existing / "tracker.allow"), "--add", "ab" * 20)
    assert out.returncode == 0, out.stderr
    assert (existing.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("shared", ["/tmp", "/var/tmp", "/dev/shm", "/"])
def test_clean_refuses_a_shared_system_directory_and_removes_nothing(shared: str) -> None:
    victim = Path(shared) / f"someone-else-{os.getpid()}.tar"
    if shared != "/":
        victim.write_bytes(b"not fabmurder's")
    try:
        result = fab("clean", "--temp-path", shared)
        assert result.returncode == 1
        assert "every user of the host shares" in result.stderr
        if shared != "/":
            assert victim.read_bytes() == b"not fabmurder's"
    finally:
        victim.unlink(missing_ok=True)


def test_a_forged_pid_file_naming_the_tracker_does_not_make_a_peer_stop_kill_it(
    tmp_path: Path,
) -> None:
    temp = tmp_path / "fabmurder"
    started = start_tracker_daemon(temp)
    assert started.returncode == 0, started.stderr
    tracker_pid = json.loads(started.stdout)["pid"]
    try:
        # Everything a forger needs is public: the tracker's PID, its start
        # time and command line (/proc), so the forged record matches them all.
        (temp / "peer-v1.pid").write_text((temp / "tracker.pid").read_text())
        finished = fab("finish", "--temp-path", str(temp), "--role", "peer")
        assert finished.returncode == 0, finished.stderr
        stopped = json.loads(finished.stdout)["stopped"]
        assert [s["stopped"] for s in stopped] == [False]
        assert "not ours" in stopped[0]["reason"]
        assert fab("daemon", "stop", "--pid-file", str(temp / "peer-v1.pid")).returncode == 0
        assert os.path.exists(f"/proc/{tracker_pid}")
        status = json.loads(fab("daemon", "status", "--pid-file", str(temp / "tracker.pid")).stdout)
        assert status["alive"] is True
    finally:
        assert fab("daemon", "stop", "--pid-file", str(temp / "tracker.pid")).returncode == 0


def test_release_torrents_are_private_and_0600(tmp_path: Path) -> None:
    import libtorrent as lt

    src = make_release_tree(tmp_path / "src")
    out = fab(
        "create", "--src", str(src), "--out-dir", str(tmp_path / "t"), "--tag", "v1",
        "--announce", "http://127.0.0.1:1/announce/x",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    torrent = Path(json.loads(out.stdout)["torrent"])
    assert lt.torrent_info(str(torrent)).priv() is True
    assert (torrent.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "t" / "v1.tar").stat().st_mode & 0o777) == 0o600


def test_the_tracker_token_is_made_private_and_a_planted_one_is_never_taken(
    tmp_path: Path,
) -> None:
    temp = tmp_path / "fabmurder"
    made = json.loads(fab("token", "--file", str(temp / "tracker.token")).stdout)
    assert made["new"] is True and len(made["token"]) == 32
    assert (temp / "tracker.token").read_text().strip() == made["token"]
    assert ((temp / "tracker.token").stat().st_mode & 0o777) == 0o600
    again = json.loads(fab("token", "--file", str(temp / "tracker.token")).stdout)
    assert again == {**made, "new": False}
    # A token file others can read is no secret: refused, and --new replaces it.
    (temp / "tracker.token").chmod(0o644)
    refused = fab("token", "--file", str(temp / "tracker.token"))
    assert refused.returncode == 1 and "a secret must be 0600" in refused.stderr
    fresh = json.loads(fab("token", "--file", str(temp / "tracker.token"), "--new").stdout)
    assert fresh["token"] != made["token"]
    # A symlink planted at the token's name is replaced, never written through.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (temp / "tracker.token").unlink()
    (temp / "tracker.token").symlink_to(victim)
    replaced = json.loads(fab("token", "--file", str(temp / "tracker.token"), "--new").stdout)
    assert not (temp / "tracker.token").is_symlink()
    assert (temp / "tracker.token").read_text().strip() == replaced["token"]
    assert victim.read_text() == "precious\n"


def test_the_tracker_reads_its_token_from_a_file_and_no_command_line_shows_it(
    tmp_path: Path,
) -> None:
    from fabmurder.tracker.client import get

    temp = tmp_path / "fabmurder"
    token = json.loads(fab("token", "--file", str(temp / "tracker.token")).stdout)["token"]
    started = fab(
        "daemon", "start", "--pid-file", str(temp / "tracker.pid"), "--log",
        str(temp / "tracker.log"), "--", "tracker", "--bind", "127.0.0.1", "--port", "0",
        "--token-file", str(temp / "tracker.token"),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        pid = json.loads(started.stdout)["pid"]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    assert token.encode() not in (proc / "cmdline").read_bytes()
                except OSError:
                    continue
        port = int(re.search(r":(\d+)/", (temp / "tracker.log").read_text()).group(1))  # type: ignore[union-attr]
        assert get("127.0.0.1", port, f"/stats/{token}").status == 200
        assert get("127.0.0.1", port, "/stats").status == 404
        assert pid > 1
    finally:
        assert fab("daemon", "stop", "--pid-file", str(temp / "tracker.pid")).returncode == 0
    (temp / "tracker.token").chmod(0o640)
    refused = fab(
        "tracker", "--bind", "127.0.0.1", "--port", "0", "--token-file", str(temp / "tracker.token")
    )
    assert refused.returncode == 2 and "a secret must be 0600" in refused.stderr
