"""The deploy flow's pieces without hosts: batches, shared links, rollback targets, the lock
record, host subsets, env lists, hooks, the JSON report and the task layer's refusals."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fabric import Config, Connection
from invoke import Context
from invoke.exceptions import Exit

import fabmurder.tasks as tasks
from fabmurder import json_report, lock, rolling, shared, targets
from fabmurder.config import settings
from fabmurder.errors import ConfigError, DeployError, HookError
from fabmurder.hooks import Hooks, RunContext, from_config
from fabmurder.layout import HostReleases, Layout, Revision, rollback_targets
from fabmurder.report import DeployReport, HostReport

LAY = Layout("/srv/app")


def test_a_batch_size_is_a_number_of_hosts_or_a_percentage_of_them() -> None:
    assert rolling.batch_count(None, 4) == 4
    assert rolling.batch_count("1", 4) == 1
    assert rolling.batch_count("50%", 4) == 2
    assert rolling.batch_count("25%", 3) == 1  # rounded up: never a batch of none
    assert rolling.batches(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    for wrong in ("x", "0%", "150%", "-1", True):
        with pytest.raises(ConfigError, match="batch_size"):
            rolling.batch_count(wrong, 4)


def test_linked_paths_stay_inside_the_release() -> None:
    assert shared.linked_paths("log, tmp/cache", "linked_dirs") == ("log", "tmp/cache")
    assert shared.linked_paths(["config/app.yml"], "linked_files") == ("config/app.yml",)
    for wrong in ("/etc", "../up", "a/../../b", "."):
        with pytest.raises(ConfigError, match="inside the release"):
            shared.linked_paths([wrong], "linked_dirs")


def test_linking_replaces_the_releases_own_copy_and_creates_what_is_missing(
    tmp_path: Path,
) -> None:
    lay = Layout(str(tmp_path / "it's app"))
    release = Path(lay.releases) / "v1"
    (release / "log").mkdir(parents=True)
    (release / "log" / "shipped.log").write_text("from the build\n")
    command = shared.link_command(lay, "v1", ["log"], ["config/app.yml"])
    subprocess.run(["sh", "-c", command], check=True)
    subprocess.run(["sh", "-c", command], check=True)  # idempotent
    root = Path(lay.root) / "shared"
    assert os.readlink(release / "log") == str(root / "log")
    assert os.readlink(release / "config" / "app.yml") == str(root / "config" / "app.yml")
    assert (root / "log").is_dir() and list((root / "log").iterdir()) == []
    assert (root / "config" / "app.yml").read_text() == ""


def state(host: str, releases: list[str], current: str | None, log: list[str]) -> HostReleases:
    revisions = [Revision(f"2026-12-01T00:00:0{i}Z", "deploy", t, "me") for i, t in enumerate(log)]
    return HostReleases(host, releases, current, None, revisions)


def test_rollback_undoes_the_latest_release_where_it_is_and_leaves_the_rest() -> None:
    # a partial deploy of v3: a and b switched, c failed and is still on v2
    found = {
        "a": state("a", ["v1", "v2", "v3"], "v3", ["v1", "v2", "v3"]),
        "b": state("b", ["v1", "v3"], "v3", ["v1", "v3"]),
        "c": state("c", ["v1", "v2"], "v2", ["v1", "v2"]),
    }
    targets_, problems, staying = rollback_targets(found, LAY)
    assert targets_ == {"a": "v2", "b": "v1"} and problems == {}
    assert staying == {"c": "stays on v2 (never switched to v3)"}

    targets_, problems, _ = rollback_targets(found, LAY, "v2")
    assert targets_ == {"a": "v2"} and list(problems) == ["b"]
    only = {"a": state("a", ["v3"], "v3", ["v3"])}
    assert rollback_targets(only, LAY)[1] == {"a": "no release before 'v3' to roll back to"}


def test_a_lock_record_names_its_holder_and_knows_a_dead_one_here() -> None:
    alive = lock.Holder("t", "me@ctl", os.uname().nodename, os.getpid(), "now", "v1", "/srv/app")
    assert lock.Holder.parse(alive.lines()) == alive
    assert alive.alive_here and not alive.stale
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = lock.Holder.parse(alive.lines().replace(f"pid={os.getpid()}", f"pid={dead.pid}"))
    assert gone.stale and "stale: its process is gone" in gone.describe()
    elsewhere = lock.Holder("t", "ci@x", "other-machine", 1, "now", "v1", "/srv/app")
    assert not elsewhere.stale and not elsewhere.alive_here


def test_a_subset_must_name_configured_peers() -> None:
    s = settings(Context(), peers=["web1", "web2", "web3"])
    assert targets.subset(s, None) == ["web1", "web2", "web3"]
    assert targets.subset(s, "web3,web1 web3") == ["web3", "web1"]
    with pytest.raises(ConfigError, match="web9 is not in murder.peers"):
        targets.subset(s, ["web1", "web9"])
    with pytest.raises(ConfigError, match="names no host"):
        targets.subset(s, "")


def test_an_env_string_sets_a_list_key_of_a_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    config.load_collection({"murder": {"peers": ["a", "b"], "linked_dirs": ["log"]}})
    monkeypatch.setenv("FABRIC_MURDER_PEERS", "web1 web2")
    config.load_shell_env()  # Invoke alone raises UncastableEnvVar here
    assert settings(Context(config=config)).peers == ("web1", "web2")


def test_a_failing_hook_names_its_stage_and_a_failed_hook_never_hides_the_error() -> None:
    seen: list[str] = []
    hooks = Hooks()
    hooks.add("starting", lambda run: seen.append(run.stage))
    hooks.add("distributed", lambda run: 1 / 0)
    hooks.add("failed", lambda run: 1 / 0)
    run = RunContext(Context(), "v1", settings(Context()), ("web1",))
    hooks.run("starting", run)
    with pytest.raises(HookError, match="the distributed hook <lambda> failed") as caught:
        hooks.run("distributed", run)
    assert (caught.value.stage, seen) == ("distributed", ["starting"])
    hooks.run("failed", run)  # reported, not raised
    with pytest.raises(ConfigError, match="no deploy stage 'publish'"):
        hooks.add("publish", print)
    assert from_config({"finished": "os.path:basename"}) is not None
    with pytest.raises(ConfigError, match="cannot import 'nope:x'"):
        from_config({"finished": ["nope:x"]})


def test_the_report_of_a_failed_run_carries_each_hosts_reason(tmp_path: Path) -> None:
    report = DeployReport("v1", hosts={"a": HostReport("a", ok=True), "b": HostReport("b")})
    report.hosts["b"].reason = "timed out"
    error = DeployError("1 peer(s) failed", {"b": "timed out"}, report)
    doc = json_report.document("deploy", 0.0, report, error=error, published={"a": "v0"})
    assert (doc["ok"], doc["exit"], doc["failures"]) == (False, 1, {"b": "timed out"})
    assert doc["hosts"]["a"]["switched"] and doc["hosts"]["a"]["previous"] == "v0"
    path = tmp_path / "out" / "r.json"
    with pytest.raises(DeployError):
        json_report.reported(str(path), "deploy", lambda: (_ for _ in ()).throw(error), dict)
    assert '"exit": 1' in path.read_text()


def test_the_tasks_refuse_minus_h_and_a_dry_run_they_do_not_have() -> None:
    with pytest.raises(Exit, match="refuse Fabric's -H/--hosts .*--peers .*got -H web1"):
        tasks.deploy(Connection("web1"))
    dry = Context(config=Config(overrides={"run": {"dry": True}}))
    with pytest.raises(Exit, match="has no dry run"):
        tasks.publish(dry, tag="v1")
