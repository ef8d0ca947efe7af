"""fabmurder's Fabric tasks: Murder's task set as a reusable collection.

Add it to your fabfile with::

    from fabric import Collection
    import fabmurder

    ns = Collection()
    ns.add_collection(fabmurder.ns, name="murder")

and run ``fab murder.distribute-files --tag v42``, or ``fab murder.deploy``
for the release layout (``releases/<tag>`` and a ``current`` symlink, with
``murder.publish``, ``murder.rollback`` and ``murder.cleanup``). Every task
reads the ``murder`` config subtree (see :mod:`fabmurder.config` for the
keys); a flag given on the command line overrides the config for that run.
The tasks are thin: each calls the function of the same name in
:mod:`fabmurder.pipeline` or :mod:`fabmurder.releases`, draws its progress
and turns failures into a clean :class:`invoke.Exit`.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from fabric import task
from fabric.group import GroupResult
from invoke.collection import Collection
from invoke.exceptions import Exit

from fabmurder import pipeline, releases
from fabmurder.config import DEFAULTS, ConfigWarning
from fabmurder.errors import DeployError, MurderError
from fabmurder.progress import Renderer, table
from fabmurder.report import DeployReport

F = TypeVar("F", bound=Callable[..., Any])

TAG = "release name (default: murder.tag, else a UTC timestamp)"
RUN_HELP: dict[str, str] = {
    "tag": TAG,
    "files_path": "on the seeder: the directory (or file) to ship",
    "local_path": "on this machine: a build to upload to the seeder first",
    "destination_path": "on the peers: releases land in DESTINATION_PATH/<tag>",
    "force": "replace a release that already exists at the destination",
    "timeout": "seconds a peer may take to download",
    "seed_after": "seconds a finished peer keeps seeding for the others",
    "max_failed_peers": "how many peers may fail before the run does",
    "upload_rate_limit": "bytes per second per host, 0 for no limit",
    "download_rate_limit": "bytes per second per peer, 0 for no limit",
    "parallel": "maximum number of SSH operations at once",
}


def _overrides(**kwargs: Any) -> dict[str, Any]:
    """Drop flags that were not given (None; False for switches) so config applies."""
    return {k: v for k, v in kwargs.items() if v is not None and v is not False}


def _reported(fn: F) -> F:
    """Turn fabmurder errors into a clean ``invoke.Exit`` with a per-host summary."""

    @functools.wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        shown = warnings.showwarning

        def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
            if issubclass(category, ConfigWarning):
                print(f"murder: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, *rest, **kw)

        warnings.showwarning = show
        try:
            return fn(c, *args, **kwargs)
        except DeployError as exc:
            if isinstance(exc.report, DeployReport):
                print(table(exc.report), flush=True)
            lines = [f"murder: {exc}:"] + [f"  [{h}] {r}" for h, r in exc.failures.items()]
            raise Exit("\n".join(lines), code=1) from None
        except MurderError as exc:
            raise Exit(f"murder: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("murder: interrupted", code=130) from None
        finally:
            warnings.showwarning = shown

    return wrapper  # type: ignore[return-value]


def _host_lines(result: GroupResult, describe: Callable[[Any], str]) -> None:
    for conn, value in result.items():
        if isinstance(value, BaseException):
            print(f"[{conn.original_host}] failed: {value}", file=sys.stderr)
        else:
            print(f"[{conn.original_host}] {describe(value)}")


def _failed(result: GroupResult, what: str) -> None:
    if result.failed:
        names = ", ".join(conn.original_host for conn in result.failed)
        raise Exit(f"murder: {what} failed on {names}", code=1)


def _drawn(step: Callable[..., Any], c: Any, *args: Any, **overrides: Any) -> Any:
    """Run a pipeline ``step`` with the progress bar drawn, then print its per-host table."""
    renderer = Renderer()
    try:
        result = step(c, *args, on_event=renderer, **_overrides(**overrides))
    finally:
        renderer.close()
    print(table(getattr(result, "report", result)), flush=True)
    return result


@task(help=RUN_HELP)
@_reported
def distribute_files(
    c: Any,
    tag: str | None = None,
    files_path: str | None = None,
    local_path: str | None = None,
    destination_path: str | None = None,
    force: bool = False,
    timeout: str | None = None,
    seed_after: str | None = None,
    max_failed_peers: str | None = None,
    upload_rate_limit: str | None = None,
    download_rate_limit: str | None = None,
    parallel: str | None = None,
) -> DeployReport:
    """Ship a release from the seeder to every peer over BitTorrent."""
    return _drawn(
        pipeline.distribute_files,
        c,
        tag=tag,
        files_path=files_path,
        local_path=local_path,
        destination_path=destination_path,
        force=force,
        timeout=timeout,
        seed_after=seed_after,
        max_failed_peers=max_failed_peers,
        upload_rate_limit=upload_rate_limit,
        download_rate_limit=download_rate_limit,
        parallel=parallel,
    )


@task(help={"parallel": RUN_HELP["parallel"]})
@_reported
def setup(c: Any, parallel: str | None = None) -> GroupResult:
    """Install the agent (fabmurder and libtorrent) on every role host."""
    result = pipeline.setup(c, **_overrides(parallel=parallel))
    _host_lines(result, lambda value: f"agent {value}")
    return result


@task
@_reported
def start_tracker(c: Any) -> str:
    """Start the tracker on the tracker host unless it is already running."""
    return pipeline.start_tracker(c, on_event=Renderer())


@task
@_reported
def stop_tracker(c: Any) -> GroupResult:
    """Stop the tracker fabmurder started on the tracker host."""
    result = pipeline.stop_tracker(c, on_event=Renderer())
    _failed(result, "stopping the tracker")
    return result


@task(help={"tag": TAG, "files_path": RUN_HELP["files_path"], "local_path": RUN_HELP["local_path"]})
@_reported
def create_torrent(
    c: Any, tag: str | None = None, files_path: str | None = None, local_path: str | None = None
) -> dict[str, Any]:
    """Pack the release on the seeder and make its torrent."""
    info = pipeline.create_torrent(
        c, on_event=Renderer(), **_overrides(tag=tag, files_path=files_path, local_path=local_path)
    )
    print(json.dumps(info, indent=2, sort_keys=True))
    return info


@task(help={"tag": "release to seed (made by create-torrent)"})
@_reported
def start_seeding(c: Any, tag: str | None = None) -> int | None:
    """Seed a release from the seeder, detached."""
    return pipeline.start_seeding(c, on_event=Renderer(), **_overrides(tag=tag))


@task(help={"tag": "release to stop seeding (default: all)"})
@_reported
def stop_seeding(c: Any, tag: str | None = None) -> GroupResult:
    """Stop seeding on the seeder (every release unless --tag is given)."""
    result = pipeline.stop_seeding(c, tag, on_event=Renderer())
    _failed(result, "stopping seeding")
    return result


@task(
    help={
        "tag": "release to download (being seeded already)",
        "sha256": "the tarball's SHA-256 (default: read on the seeder)",
        "destination_path": RUN_HELP["destination_path"],
        "force": RUN_HELP["force"],
        "timeout": RUN_HELP["timeout"],
        "seed_after": RUN_HELP["seed_after"],
        "max_failed_peers": RUN_HELP["max_failed_peers"],
    }
)
@_reported
def peer_download(
    c: Any,
    tag: str | None = None,
    sha256: str | None = None,
    destination_path: str | None = None,
    force: bool = False,
    timeout: str | None = None,
    seed_after: str | None = None,
    max_failed_peers: str | None = None,
) -> DeployReport:
    """Download a seeded release on every peer and wait until all have it."""
    return _drawn(
        pipeline.peer_download,
        c,
        sha256,
        tag=tag,
        destination_path=destination_path,
        force=force,
        timeout=timeout,
        seed_after=seed_after,
        max_failed_peers=max_failed_peers,
    )


@task(help={"tag": "release to stop peering (default: all)"})
@_reported
def stop_peering(c: Any, tag: str | None = None) -> GroupResult:
    """Stop the peer agents on every peer (every release unless --tag is given)."""
    result = pipeline.stop_peering(c, tag, on_event=Renderer())
    _failed(result, "stopping peering")
    return result


@task(help={"tag": "only this release's files (default: all)"})
@_reported
def clean_temp_files(c: Any, tag: str | None = None) -> GroupResult:
    """Remove fabmurder's temp files on every role host."""
    result = pipeline.clean_temp_files(c, tag, on_event=Renderer())
    _failed(result, "cleaning temp files")
    return result


# -- the release layout: releases/<tag>, current, revisions.log ----------------------------------

WHERE = "on the peers: the directory holding releases/ and current"
KEEP = "how many releases cleanup keeps (default: murder.keep_releases, else 5)"
DEPLOY_HELP: dict[str, str] = {
    **RUN_HELP,
    "destination_path": "on the peers: releases land in DESTINATION_PATH/releases/<tag>",
    "keep_releases": KEEP,
}


@task(help=DEPLOY_HELP)
@_reported
def deploy(
    c: Any,
    tag: str | None = None,
    files_path: str | None = None,
    local_path: str | None = None,
    destination_path: str | None = None,
    force: bool = False,
    timeout: str | None = None,
    seed_after: str | None = None,
    max_failed_peers: str | None = None,
    upload_rate_limit: str | None = None,
    download_rate_limit: str | None = None,
    parallel: str | None = None,
    keep_releases: str | None = None,
) -> releases.Deployed:
    """Distribute a release to releases/<tag>, point current at it, remove old releases."""
    return _drawn(
        releases.deploy,
        c,
        tag=tag,
        files_path=files_path,
        local_path=local_path,
        destination_path=destination_path,
        force=force,
        timeout=timeout,
        seed_after=seed_after,
        max_failed_peers=max_failed_peers,
        upload_rate_limit=upload_rate_limit,
        download_rate_limit=download_rate_limit,
        parallel=parallel,
        keep_releases=keep_releases,
    )


@task(help={"tag": "the release to switch to (required)", "destination_path": WHERE})
@_reported
def publish(c: Any, tag: str | None = None, destination_path: str | None = None) -> Any:
    """Point current at releases/<tag> on every peer, atomically."""
    return releases.publish(
        c, tag, on_event=Renderer(), **_overrides(destination_path=destination_path)
    )


@task(help={"destination_path": WHERE})
@_reported
def rollback(c: Any, destination_path: str | None = None) -> Any:
    """Point current back at the release before it on every peer."""
    return releases.rollback(
        c, on_event=Renderer(), **_overrides(destination_path=destination_path)
    )


@task(
    help={
        "keep_releases": KEEP,
        "destination_path": WHERE,
    }
)
@_reported
def cleanup(c: Any, keep_releases: str | None = None, destination_path: str | None = None) -> Any:
    """Remove old releases on every peer, keeping the newest few and the current one."""
    return releases.cleanup(
        c,
        on_event=Renderer(),
        **_overrides(keep_releases=keep_releases, destination_path=destination_path),
    )


@task(help={"raw": "print the raw JSON instead of a summary"})
@_reported
def status(c: Any, raw: bool = False) -> dict[str, Any]:
    """Show each host's roles, fabmurder processes and releases, and the tracker's swarms."""
    state = releases.status(c)
    if raw:
        print(json.dumps(state, indent=2, sort_keys=True))
        return state
    for host, entry in state.items():
        if host == "tracker":
            swarms = entry.get("swarms")
            summary = f"{len(swarms)} swarm(s)" if isinstance(swarms, dict) else entry
            print(f"tracker: {summary}")
            for info_hash, swarm in (swarms or {}).items():
                print(f"  {info_hash}: {json.dumps(swarm, sort_keys=True)}")
            continue
        print(f"[{host}] {'+'.join(entry['roles'])}: {_describe(entry)}")
    return state


def _describe(entry: dict[str, Any]) -> str:
    """Return one line about a host's status entry."""
    if "error" in entry:
        return f"unreachable: {entry['error']}"
    status = entry.get("status") or {}
    if status.get("agent") is False:
        return "agent not installed"
    daemons = [
        f"{name} (pid {d.get('pid')})"
        for name, d in sorted((status.get("daemons") or {}).items())
        if isinstance(d, dict) and d.get("alive")
    ]
    parts = [f"running: {', '.join(daemons) or 'nothing'}"]
    layout = entry.get("layout") or {}
    if layout.get("error"):
        parts.append(f"releases unreadable: {layout['error']}")
    elif layout.get("current") or layout.get("releases"):
        parts.append(f"current: {layout.get('current') or 'none'}")
        parts.append(f"releases: {', '.join(layout.get('releases') or []) or 'none'}")
    else:
        flat = status.get("releases") or []
        parts.append(f"releases: {', '.join(map(str, flat)) or 'none'}")
    if status.get("partials"):
        parts.append(f"partial: {', '.join(map(str, status['partials']))}")
    return "; ".join(parts)


ns = Collection(
    distribute_files,
    setup,
    start_tracker,
    stop_tracker,
    create_torrent,
    start_seeding,
    stop_seeding,
    peer_download,
    stop_peering,
    clean_temp_files,
    status,
    deploy,
    publish,
    rollback,
    cleanup,
)
ns.configure({"murder": copy.deepcopy(DEFAULTS)})
