"""``local_path``: a build on the control machine, handed to the seeder before packing.

A file is copied as it is (mode kept); a directory travels as one tar
archive (one SFTP upload, not one per file) and is unpacked on the seeder
under ``temp_path/upload-<tag>``, which the end of the deploy removes. Both
land in directories the host's ``put --dir`` has made private (0700), so
no other user of the seeder can plant a name there or read the build.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from fabmurder import contract
from fabmurder.config import Settings
from fabmurder.errors import ConfigError
from fabmurder.remote import ConnectionPool, agent_command, quote, sftp_path, shell


def upload_local(pool: ConnectionPool, s: Settings) -> str:
    """Hand ``local_path`` on this machine to the seeder; return its path there."""
    assert s.local_path and s.seeder
    local = Path(s.local_path).expanduser()
    if not local.exists():
        raise ConfigError(f"murder.local_path {s.local_path!r} does not exist", key="local_path")
    conn = pool.get(s.seeder)
    directory, archive_name = contract.upload(s.tag)
    target = s.tmp(directory)
    # temp_path first (made or made private), then a fresh upload directory
    # in it: nobody else can plant a name where SFTP writes, or read what lands
    private = agent_command(s, "put", "--dir", s.temp_path, "--dir", target)
    shell(conn, f"rm -rf -- {quote(target)} && {private}", "preparing the upload")
    if local.is_file():
        remote = f"{target}/{local.name}"
        conn.put(str(local), remote=sftp_path(remote))
        shell(conn, f"chmod {oct(local.stat().st_mode & 0o7777)[2:]} {quote(remote)}", "upload")
        return remote
    with tempfile.TemporaryDirectory(prefix="fabmurder-") as tmp:
        archive = Path(tmp) / "upload.tar"
        with tarfile.open(archive, "w") as tar:
            for child in sorted(local.iterdir()):
                tar.add(child, arcname=child.name)
        conn.put(str(archive), remote=sftp_path(s.tmp(archive_name)))
    archive_path = quote(s.tmp(archive_name))
    unpack = f"tar -C {quote(target)} -xpf {archive_path} && rm -f -- {archive_path}"
    shell(conn, unpack, "unpacking the upload")
    return target
