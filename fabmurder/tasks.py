"""fabmurder's Fabric tasks: Murder's task set as a reusable collection.

Add it to your fabfile with::

    from invoke import Collection
    import fabmurder

    ns = Collection()
    ns.add_collection(fabmurder.ns, name="murder")

and run ``fab murder.distribute-files --tag v42``, or ``fab murder.deploy``
for the release layout (``releases/<tag>`` and a ``current`` symlink, with
``murder.publish``, ``murder.rollback`` and ``murder.cleanup``). Every task
reads the ``murder`` config subtree (see :mod:`fabmurder.config` for the
keys); a flag given on the command line overrides the config for that run.
The tasks take their hosts from that config and refuse Fabric's ``-H``
(``--peers`` picks a subset of ``murder.peers``); they have no short flags,
so no letter means one thing to ``fab`` and another to a task. Invoke's
``--dry`` makes ``murder.deploy`` a dry run and is refused by the tasks
that have none.
The tasks are thin: each calls the function of the same name in
:mod:`fabmurder.pipeline` or :mod:`fabmurder.releases`, draws its progress
and turns failures into a clean :class:`invoke.Exit`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, cast

from fabric import Connection, task
from invoke.collection import Collection
from invoke.exceptions import Exit

from fabmurder import dryrun, json_report, pipeline, releases, targets
from fabmurder.config import DEFAULTS, ConfigWarning, murder_tree, settings
from fabmurder.errors import DeployError, MurderError
from fabmurder.options import Options, UntaggedOptions
from fabmurder.progress import Renderer, table
from fabmurder.remote import HostResults
from fabmurder.report import DeployReport
from fabmurder.summary import status_lines
from fabmurder.tags import default_tag, validate_tag

if TYPE_CHECKING:
    from fabmurder.contract import CreateInfo

F = TypeVar("F", bound=Callable[..., Any])

TAG = "release name (default: murder.tag, else a UTC timestamp)"
WHERE = "on the peers: the directory holding releases/ and current"
#: every option flag a task takes, with its help: the one place each is spelt out
FLAGS: dict[str, str] = {
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
    "keep_releases": "how many releases cleanup keeps (default: murder.keep_releases, else 5)",
    "peers": "only these peers (comma-separated), a subset of murder.peers; not -H",
    "report": "write the run's result as JSON to this file, on success and failure",
    "dry_run": "resolve, probe and print what would run where; change nothing",
    "batch_size": "publish in batches of this many peers, or a percentage such as 25%",
    "health_check": "a command run in current on each switched peer; failing reverts",
    "layout": "tarball (one tar file) or tree (file by file, reusing older tree releases)",
}
#: the flags of a whole distribution (distribute-files, deploy)
RUN = (
    "tag", "files_path", "local_path", "destination_path", "force", "timeout", "seed_after",
    "max_failed_peers", "upload_rate_limit", "download_rate_limit", "parallel", "peers",
    "report", "layout",
)  # fmt: skip
#: flags whose absence means False (switches); the others default to None
SWITCHES = ("force", "dry_run")


def murder_task(*flags: str, **helps: str) -> Callable[[Callable[..., Any]], Any]:
    """Make ``body`` a task that takes the option ``flags`` besides its own arguments.

    ``body(c, *own, **options)`` receives only the flags that were given (a
    flag left out falls back to the config; ``--peers`` arrives as
    ``hosts``), and failures are turned into a clean ``invoke.Exit``
    (:func:`_reported`). ``helps`` gives the help of the body's own
    arguments, or another help for a flag.
    """

    def decorate(body: Callable[..., Any]) -> Any:
        own = [
            p
            for p in inspect.signature(body).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        params = own + [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=False if name in SWITCHES else None,
                annotation=bool if name in SWITCHES else "str | None",
            )
            for name in flags
        ]

        @functools.wraps(body)
        def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
            options = {k: kwargs.pop(k) for k in flags if k in kwargs}
            given = {k: v for k, v in options.items() if v is not None and v is not False}
            if "peers" in given:
                given["hosts"] = targets.parse_hosts(given.pop("peers"))
            return body(c, *args, **kwargs, **given)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        helped = {name: FLAGS[name] for name in flags} | helps
        return task(help=helped, auto_shortflags=False)(_reported(wrapper, dry="dry_run" in flags))

    return decorate


def _reported(fn: F, dry: bool = False) -> F:
    """Turn fabmurder errors into a clean ``invoke.Exit`` with a per-host summary.

    It refuses ``-H`` (:func:`fabmurder.targets.refuse_host_flag`) and, unless
    the task has a dry run (``dry``), Invoke's ``--dry``.
    """

    @functools.wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(c, Connection):
            raise Exit(f"murder: {targets.HOST_FLAG_REFUSED} (got -H {c.original_host})", code=1)
        if not dry and dryrun.is_dry(c):
            raise Exit(
                "murder: this task has no dry run, and under --dry it would still copy files; "
                "`fab --dry murder.deploy` (or murder.deploy --dry-run) shows what a deploy does",
                code=1,
            )
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


def _host_lines(result: HostResults[Any], describe: Callable[[Any], str]) -> None:
    for host, value in result.items():
        if isinstance(value, BaseException):
            print(f"[{host}] failed: {value}", file=sys.stderr)
        else:
            print(f"[{host}] {describe(value)}")


def _failed(result: HostResults[Any], what: str) -> HostResults[Any]:
    """Return ``result``, or exit non-zero naming every host where ``what`` failed."""
    if result.failed:
        names = ", ".join(result.failed)
        raise Exit(f"murder: {what} failed on {names}", code=1)
    return result


def _drawn(step: Callable[..., Any], c: Any, *args: Any, **options: Any) -> Any:
    """Run a pipeline ``step`` with the progress bar drawn, then print its per-host table."""
    renderer = Renderer()
    try:
        result = step(c, *args, on_event=renderer, **options)
    finally:
        renderer.close()
    print(table(getattr(result, "report", result)), flush=True)
    return result


@murder_task(*RUN)
def distribute_files(c: Any, **options: Any) -> DeployReport:
    """Ship a release from the seeder to every peer over BitTorrent."""
    options = _tagged(c, options)
    hosts, path = options.pop("hosts", None), _report_path(c, options)
    if hosts is not None:
        options["peers"] = targets.subset(settings(c, **options), hosts)

    def call() -> DeployReport:
        return cast(DeployReport, _drawn(pipeline.distribute_files, c, **options))

    return json_report.reported(
        path, "distribute-files", call, lambda r: {"report": r}, options["tag"]
    )


def _tagged(c: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Return ``options`` with the run's tag resolved once (flag, config, else a timestamp).

    Everything the run does, hooks and the JSON report included, then names
    the same release.
    """
    tag = options.get("tag") or murder_tree(c).get("tag")
    return {**options, "tag": validate_tag(str(tag)) if tag else default_tag()}


def _report_path(c: Any, options: dict[str, Any]) -> str | None:
    """Pop ``--report`` from ``options``; return it, else ``murder.report``."""
    path = options.pop("report", None) or murder_tree(c).get("report")
    return str(path) if path else None


@murder_task("parallel")
def setup(c: Any, **options: Unpack[Options]) -> HostResults[str]:
    """Install the agent (fabmurder and libtorrent) on every role host."""
    result = pipeline.setup(c, **options)
    _host_lines(result, lambda value: f"agent {value}")
    return result


@murder_task()
def start_tracker(c: Any) -> str:
    """Start the tracker on the tracker host unless it is already running."""
    return pipeline.start_tracker(c, on_event=Renderer())


@murder_task()
def stop_tracker(c: Any) -> HostResults[Any]:
    """Stop the tracker fabmurder started on the tracker host."""
    return _failed(pipeline.stop_tracker(c, on_event=Renderer()), "stopping the tracker")


@murder_task("tag", "files_path", "local_path")
def create_torrent(c: Any, **options: Unpack[Options]) -> CreateInfo:
    """Pack the release on the seeder and make its torrent."""
    info = pipeline.create_torrent(c, on_event=Renderer(), **options)
    print(json.dumps(info, indent=2, sort_keys=True))
    return info


@murder_task("tag", tag="release to seed (made by create-torrent)")
def start_seeding(c: Any, **options: Unpack[Options]) -> int | None:
    """Seed a release from the seeder, detached."""
    return pipeline.start_seeding(c, on_event=Renderer(), **options)


@task(help={"tag": "release to stop seeding (default: all)"}, auto_shortflags=False)
@_reported
def stop_seeding(c: Any, tag: str | None = None) -> HostResults[Any]:
    """Stop seeding on the seeder (every release unless --tag is given)."""
    return _failed(pipeline.stop_seeding(c, tag, on_event=Renderer()), "stopping seeding")


@murder_task(
    "destination_path", "force", "timeout", "seed_after", "max_failed_peers",
    tag="release to download (being seeded already)",
    sha256="the tarball's SHA-256 (default: read on the seeder)",
)  # fmt: skip
def peer_download(
    c: Any,
    tag: str | None = None,
    sha256: str | None = None,
    **options: Unpack[UntaggedOptions],
) -> DeployReport:
    """Download a seeded release on every peer and wait until all have it."""
    given: Options = {**options, "tag": tag} if tag else {**options}
    return cast(DeployReport, _drawn(pipeline.peer_download, c, sha256, **given))


@task(help={"tag": "release to stop peering (default: all)"}, auto_shortflags=False)
@_reported
def stop_peering(c: Any, tag: str | None = None) -> HostResults[Any]:
    """Stop the peer agents on every peer (every release unless --tag is given)."""
    return _failed(pipeline.stop_peering(c, tag, on_event=Renderer()), "stopping peering")


@task(help={"tag": "only this release's daemons (default: all)"}, auto_shortflags=False)
@_reported
def stop(c: Any, tag: str | None = None) -> HostResults[Any]:
    """Stop every fabmurder daemon on every role host, past the hosts that cannot be reached."""
    return _failed(pipeline.stop(c, tag, on_event=Renderer()), "stopping")


@task(help={"tag": "only this release's files (default: all)"}, auto_shortflags=False)
@_reported
def clean_temp_files(c: Any, tag: str | None = None) -> HostResults[Any]:
    """Remove fabmurder's temp files on every role host."""
    return _failed(pipeline.clean_temp_files(c, tag, on_event=Renderer()), "cleaning temp files")


# -- the release layout: releases/<tag>, current, revisions.log ----------------------------------


@murder_task(
    *RUN, "keep_releases", "batch_size", "health_check", "dry_run",
    destination_path="on the peers: releases land in DESTINATION_PATH/releases/<tag>",
)  # fmt: skip
def deploy(c: Any, **options: Any) -> releases.Deployed | None:
    """Distribute a release to releases/<tag>, point current at it, remove old releases."""
    options = _tagged(c, options)
    hosts, path = options.pop("hosts", None), _report_path(c, options)
    if options.pop("dry_run", False) or dryrun.is_dry(c):
        plan = dryrun.dry_run(c, hosts=hosts, **options)
        print("\n".join(plan.lines()), flush=True)
        if path:
            json_report.write(path, json_report.dry_document("deploy", plan))
        return None

    def call() -> releases.Deployed:
        return cast(releases.Deployed, _drawn(releases.deploy, c, hosts=hosts, **options))

    def describe(done: releases.Deployed) -> dict[str, Any]:
        return {"report": done.report, "published": done.published, "removed": done.removed}

    return json_report.reported(path, "deploy", call, describe, options["tag"])


@murder_task(
    "destination_path", "peers", tag="the release to switch to (required)", destination_path=WHERE
)
def publish(c: Any, tag: str | None = None, **options: Unpack[UntaggedOptions]) -> Any:
    """Point current at releases/<tag> on every peer, atomically."""
    return releases.publish(c, tag, on_event=Renderer(), **options)


@murder_task(
    "destination_path", "peers", destination_path=WHERE,
    to="the release to go back to (default: the one before the latest, on each peer)",
)  # fmt: skip
def rollback(c: Any, to: str | None = None, **options: Unpack[Options]) -> Any:
    """Point current back at the release before the latest one (or --to TAG) on every peer."""
    return releases.rollback(c, to, on_event=Renderer(), **options)


@murder_task("keep_releases", "destination_path", "peers", destination_path=WHERE)
def cleanup(c: Any, **options: Unpack[Options]) -> Any:
    """Remove old releases on every peer, keeping the newest few and the current one."""
    return releases.cleanup(c, on_event=Renderer(), **options)


@task(help={"raw": "print the raw JSON instead of a summary"}, auto_shortflags=False)
@_reported
def status(c: Any, raw: bool = False) -> dict[str, Any]:
    """Show each host's roles, fabmurder processes and releases, and the tracker's swarms."""
    state: dict[str, dict[str, Any]] = dict(releases.status(c))
    print(json.dumps(state, indent=2, sort_keys=True) if raw else "\n".join(status_lines(state)))
    return state


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
    stop,
    clean_temp_files,
    status,
    deploy,
    publish,
    rollback,
    cleanup,
)
ns.configure({"murder": copy.deepcopy(DEFAULTS)})
targets.accept_env_lists()
