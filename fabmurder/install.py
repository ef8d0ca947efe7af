"""Install the agent (fabmurder, libtorrent, bencode.py) on the role hosts.

The control machine ships every wheel, so the hosts never need a package
index: fabmurder's own wheel is built from the package this process imports
(pure Python, byte-for-byte reproducible), and each dependency is repacked
from its installed distribution into a wheel cached under
``~/.cache/fabmurder/wheels`` (or downloaded with ``pip download
--only-binary=:all:`` when it was not installed from a wheel). A cached
wheel is used again only if its SHA-256 is the one recorded in the cache's
``SHA256SUMS`` when fabmurder made or fetched it, never by its name alone.
A ``murder.wheel_dir`` replaces all of that with the user's own wheels.

On each host the wheels land in ``remote_path/wheels`` and are installed
into ``remote_path/venv`` (made with the host's ``murder.python``) with
``pip install --no-index``. A stamp holding the hash of the wheel set makes
a second run a single SSH command per host. Setup also records every file of
the venv with its SHA-256 (``remote_path/installed.files``); ``murder.status``
and the next setup compare the venv with it, using the host's ``sha256sum``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fabric import Connection

from fabmurder import wheel_relay
from fabmurder.config import Settings
from fabmurder.errors import HostError, MurderError
from fabmurder.preinstall import ensure_remote_path
from fabmurder.remote import QUIET, ConnectionPool, failure_reason, host_name
from fabmurder.report import Event, EventCallback

#: distributions the host side imports, besides fabmurder itself
HOST_DEPENDENCIES = ("libtorrent", "bencode.py")
#: shipped to run the install (``python pip.whl/pip install ...``), not installed:
#: a venv made without pip skips ensurepip, most of a first install's time
INSTALLER = "pip"
MIN_PYTHON = (3, 11)
#: under ``remote_path``: every file of the venv with its SHA-256, as setup left it
FILES_LIST = "installed.files"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class WheelSet:
    """The wheels to ship, and the hash that names the set."""

    paths: tuple[Path, ...]
    digest: str


def cache_dir() -> Path:
    """Return the control machine's wheel cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabmurder" / "wheels"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _write_wheel(target: Path, files: list[tuple[str, bytes]], dist_info: str) -> Path:
    """Write a wheel of ``files`` (archive name, bytes) plus its RECORD, reproducibly."""
    rows = [(name, _record_hash(data), str(len(data))) for name, data in files]
    record_name = f"{dist_info}/RECORD"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([*rows, (record_name, "", "")])
    entries = [*files, (record_name, buf.getvalue().encode())]
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(target)
    return target


def build_self_wheel(out_dir: Path) -> Path:
    """Build fabmurder's wheel from the package this process imports."""
    import fabmurder

    package = Path(fabmurder.__file__).resolve().parent
    version = fabmurder.__version__
    if version == "0+unknown":
        version = "0"
    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package.parent).as_posix()
        if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append((rel, path.read_bytes()))
    dist_info = f"fabmurder-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: fabmurder\nVersion: {version}\n"
    wheel = "Wheel-Version: 1.0\nGenerator: fabmurder\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files += [(f"{dist_info}/METADATA", meta.encode()), (f"{dist_info}/WHEEL", wheel.encode())]
    return _write_wheel(out_dir / f"fabmurder-{version}-py3-none-any.whl", files, dist_info)


def _tag_suffix(wheel_text: str) -> str:
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")
    ]
    parts = [list(dict.fromkeys(t.split("-")[i] for t in tags)) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def repack_installed(name: str, out_dir: Path) -> Path:
    """Return a wheel of the installed distribution ``name``, cached in ``out_dir``.

    :raises MurderError: when ``name`` is not installed from a wheel and
        ``pip download`` cannot fetch a binary wheel of the same version.
    """
    dist = metadata.distribution(name)
    project = dist.metadata["Name"].replace("-", "_").replace(".", "_")
    wheel_text = dist.read_text("WHEEL")
    if not wheel_text or not dist.files:
        return _pip_download(dist.metadata["Name"], dist.version, out_dir)
    target = out_dir / f"{project}-{dist.version}-{_tag_suffix(wheel_text)}.whl"
    if _verified(target):
        return target
    dist_info = f"{project}-{dist.version}.dist-info"
    skip = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}
    files: list[tuple[str, bytes]] = []
    for item in dist.files:
        rel = item.as_posix()
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        if rel.split("/", 1)[0].endswith(".dist-info"):
            if rel.rsplit("/", 1)[-1] in skip and rel.count("/") == 1:
                continue
            rel = dist_info + "/" + rel.split("/", 1)[1]
        files.append((rel, Path(str(dist.locate_file(item))).read_bytes()))
    return _record(_write_wheel(target, files, dist_info))


#: in the wheel cache: the SHA-256 of each wheel fabmurder put there, when it did
SUMS = "SHA256SUMS"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sums(cache: Path) -> dict[str, str]:
    try:
        lines = (cache / SUMS).read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {name: digest for digest, _, name in (line.partition("  ") for line in lines) if name}


def _record(path: Path) -> Path:
    """Record ``path``'s SHA-256 in its cache's list; return the path."""
    sums = {**_sums(path.parent), path.name: _sha256(path)}
    tmp = path.parent / f"{SUMS}.tmp"
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    tmp.replace(path.parent / SUMS)
    return path


def _verified(path: Path) -> bool:
    """Tell whether a cached wheel is the one recorded when it was made (never by name alone)."""
    return path.is_file() and _sums(path.parent).get(path.name) == _sha256(path)


def _pip_download(name: str, version: str, out_dir: Path) -> Path:
    """Download a binary wheel (pip checks the index's hash), or reuse a verified cached one."""
    prefix = f"{name.lower().replace('-', '_').replace('.', '_')}-{version}-"
    for cached in sorted(out_dir.glob("*.whl")):
        if cached.name.lower().startswith(prefix):
            if _verified(cached):
                return cached
            cached.unlink()  # not the wheel fabmurder fetched: fetch it again
    before = set(out_dir.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["-d", str(out_dir), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    new = sorted(set(out_dir.glob("*.whl")) - before)
    if proc.returncode != 0 or not new:
        raise MurderError(f"cannot get a wheel of {name}=={version}: {proc.stderr.strip()[-300:]}")
    return _record(new[0])


def wheel_set(s: Settings) -> WheelSet:
    """Return the wheels to ship: ``wheel_dir``'s, or built and cached ones."""
    if s.wheel_dir:
        paths = sorted(Path(s.wheel_dir).expanduser().glob("*.whl"))
        if not paths:
            raise MurderError(f"murder.wheel_dir {s.wheel_dir!r} holds no wheels")
    else:
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        build = cache / "self"
        build.mkdir(exist_ok=True)
        names = (*HOST_DEPENDENCIES, INSTALLER)
        paths = [build_self_wheel(build)] + [repack_installed(n, cache) for n in names]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return WheelSet(tuple(paths), digest.hexdigest())


def _python_check(python: str, modules: str) -> str:
    want = ", ".join(str(n) for n in MIN_PYTHON)
    code = f"import sys, {modules}; sys.exit(0 if sys.version_info >= ({want}) else 3)"
    return f"{shlex.quote(python)} -c {shlex.quote(code)}"


def stamp_path(s: Settings) -> str:
    """Return the host path of the stamp that names the installed wheel set."""
    return f"{s.remote_path}/installed.sha256"


def files_path(s: Settings) -> str:
    """Return the host path of the list of the venv's files and their SHA-256, made at setup."""
    return f"{s.remote_path}/{FILES_LIST}"


def _venv_listing(s: Settings) -> str:
    """Return the shell pipeline that lists every file of the venv with its SHA-256, sorted."""
    return (
        f"cd -- {shlex.quote(s.remote_path + '/venv')} && find . -type f -print0"
        " | LC_ALL=C sort -z | xargs -0r sha256sum"
    )


def check_command(s: Settings) -> str:
    """Return the shell step that prints ``venv=ok`` or ``venv=changed <files>`` (a few of them).

    The venv's files are hashed with the host's ``sha256sum``, not with the
    agent's own code, and compared with the list setup made; a file added,
    removed or changed since is named. Prints nothing without such a list.
    """
    listed = shlex.quote(files_path(s))
    return (
        f"( test -f {listed} && changed=$({_venv_listing(s)} | diff -- {listed} - "
        "| sed -n 's/^[<>] [0-9a-f]*  \\.\\///p' | LC_ALL=C sort -u | head -n 5) && "
        'if test -z "$changed"; then echo venv=ok; else echo "venv=changed" $changed; fi )'
    )


def parse_check(stdout: str) -> str | None:
    """Return what :func:`check_command` printed: ``"ok"``, ``"changed <files>"`` or None."""
    for line in stdout.splitlines():
        if line.startswith("venv="):
            return line[len("venv=") :].strip()
    return None


def install_host(
    conn: Connection,
    s: Settings,
    wheels: WheelSet,
    deliver: Callable[[Connection, str], None] | None = None,
) -> str:
    """Install the agent on one host; return "installed", "reinstalled (...)" or "up to date".

    An install whose stamp is current is checked file by file against the
    list setup made (:func:`check_command`): a venv that was changed since is
    installed again, and the result names what had changed.

    :param deliver: how the wheels reach the host's empty wheel directory
        (called with the connection and its path); by default SFTP from here
        (:mod:`fabmurder.wheel_relay` fetches them from a relay host instead).

    :raises HostError: when the host lacks a usable Python or pip fails.
    """
    host = host_name(conn)
    venv_py = shlex.quote(s.agent_python)
    stamp = stamp_path(s)
    probe = conn.run(
        f"test -x {venv_py} && cat {shlex.quote(stamp)} 2>/dev/null; {check_command(s)}; true",
        **QUIET,
    )
    lines = probe.stdout.splitlines()
    found = lines[0].strip() if lines and not lines[0].startswith("venv=") else ""
    check = parse_check(probe.stdout)
    if found == wheels.digest and check == "ok":
        return "up to date"
    changed = (
        f" (the venv had changed: {check[len('changed ') :]})"
        if found == wheels.digest and check and check != "ok"
        else ""
    )
    installer = next((p for p in wheels.paths if p.name.startswith(f"{INSTALLER}-")), None)
    payload = [p for p in wheels.paths if p != installer]
    modules = "venv" if installer else "venv, ensurepip"
    check = conn.run(_python_check(s.python, modules), **QUIET)
    if check.exited != 0:
        version = "not found" if check.exited == 127 else failure_reason(check)
        raise HostError(
            host,
            f"no usable Python: {s.python!r} must be Python >= "
            f"{'.'.join(map(str, MIN_PYTHON))} with the {modules.replace(', ', ' and ')} "
            f"module{'s' if installer is None else ''} ({version}); set murder.python",
            check,
        )
    wheel_dir = f"{s.remote_path}/wheels"
    ensure_remote_path(conn, s)  # ours alone (0700), or refused before anything is written
    _checked(
        conn,
        f"rm -rf {shlex.quote(wheel_dir)} && mkdir -m 0700 {shlex.quote(wheel_dir)}",
        "preparing remote_path",
    )
    if deliver is None:
        for path in wheels.paths:
            conn.put(str(path), remote=f"{wheel_dir}/{path.name}")
    else:
        deliver(conn, wheel_dir)
    names = " ".join(shlex.quote(f"{wheel_dir}/{p.name}") for p in payload)
    venv = f"{shlex.quote(s.python)} -m venv {shlex.quote(s.remote_path + '/venv')}"
    if installer:
        venv += " --without-pip"
        pip = f"{venv_py} {shlex.quote(f'{wheel_dir}/{installer.name}/pip')}"
    else:
        pip = f"{venv_py} -m pip"
    # Bytecode is compiled here, once, and recorded with the rest; host
    # commands run with -B, so nothing is written into the venv after this.
    listed = shlex.quote(files_path(s))
    _checked(
        conn,
        f"(test -x {venv_py} || {venv})"
        f" && {pip} --isolated --disable-pip-version-check install --quiet"
        f" --no-index --no-deps --force-reinstall --find-links {shlex.quote(wheel_dir)} {names}"
        f" && {venv_py} -I -B -m fabmurder --help >/dev/null"
        f" && ( {_venv_listing(s)} ) > {shlex.quote(files_path(s) + '.tmp')}"
        f" && mv -- {shlex.quote(files_path(s) + '.tmp')} {listed}",
        "installing the agent",
    )
    _checked(
        conn,
        f"printf '%s\\n' {shlex.quote(wheels.digest)} > {shlex.quote(stamp + '.tmp')}"
        f" && mv {shlex.quote(stamp + '.tmp')} {shlex.quote(stamp)}",
        "writing the install stamp",
    )
    return "reinstalled" + changed if changed else "installed"


def _checked(conn: Connection, command: str, what: str) -> Any:
    result = conn.run(command, **QUIET)
    if result.exited != 0:
        raise HostError(host_name(conn), f"{what} failed: {failure_reason(result)}", result)
    return result


def install_agent(
    pool: ConnectionPool,
    s: Settings,
    stamps: Mapping[str, str],
    hosts: Iterable[str],
    emit: EventCallback,
) -> dict[str, str]:
    """Install the agent on ``hosts`` unless the probed stamp is current; return host -> reason."""
    wheels = wheel_set(s)
    hosts = list(hosts)
    counts: dict[str, int] = {}
    current = [h for h in hosts if stamps.get(h) == wheels.digest]
    if current:
        counts["up to date"] = len(current)
    stale = [h for h in hosts if h not in current]
    result = wheel_relay.install_everywhere(pool, s, wheels, stale, install_host, emit)
    for host, value in result.succeeded.items():
        counts[value] = counts.get(value, 0) + 1
        emit(Event("host", f"agent {value}", host, {"ok": True, "quiet": True}))
    if counts:
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        emit(Event("phase", f"agent: {summary}"))
    return result.failed


def ensure_agent(
    pool: ConnectionPool,
    s: Settings,
    stamps: Mapping[str, str],
    hosts: Iterable[str],
    emit: EventCallback,
) -> None:
    """Install the agent on ``hosts`` where needed; raise HostError if any fails."""
    failures = install_agent(pool, s, stamps, hosts, emit)
    if failures:
        host, reason = next(iter(failures.items()))
        raise HostError(host, f"installing the agent failed: {reason}")
