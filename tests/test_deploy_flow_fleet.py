"""The deploy flow a release engineer expects, through the real ``fab`` with the examples.

Production's four peers (hosts 4-7, ``web1.prod`` ... ``web4.prod``) and
its build host (host 1) are used, reached through the same SSH config as
the other example tests. Each test starts from empty destinations and
writes its own runtime config file (the example's production file plus
the keys it tries), as a user's ``deploy/*.yaml`` would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_releases_fleet import APP, BUILD, EXAMPLES, ROOT, build, current, ssh_config

from fabmurder.json_report import SCHEMA
from fabmurder.testing.fleet import Fleet, Host
from fabmurder.testing.proc import wait_until

__all__ = ["build", "ssh_config"]  # fixtures, used by name
NAMES = ["web1.prod", "web2.prod", "web3.prod", "web4.prod"]
TEMP = "/srv/fabmurder/tmp"


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Return where ``value`` breaks ``schema`` (the JSON Schema subset docs/report.md uses)."""
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    wanted = schema.get("type")
    errors = []
    if wanted:
        names = wanted if isinstance(wanted, list) else [wanted]
        ok = any(
            (n == "integer" and isinstance(value, int) and not isinstance(value, bool))
            or (n == "number" and isinstance(value, int | float) and not isinstance(value, bool))
            or (n in kinds and isinstance(value, kinds[n]))
            for n in names
        )
        if not ok:
            return [f"{where}: {value!r} is not {wanted}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += schema_errors(item, sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def documented_schema() -> dict[str, Any]:
    page = (ROOT / "docs" / "report.md").read_text()
    (block,) = re.findall(r"```json\n(.*?)```", page, re.S)
    return dict(json.loads(block))


def read_report(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert schema_errors(data, documented_schema()) == []
    return dict(data)


@pytest.fixture
def prod(fleet: Fleet, build: Host, tmp_path: Path) -> list[Host]:
    """Return production's peers with empty destinations and build 1.0 on the build host."""
    fleet.run_in(
        build, ["sh", "-c", f"printf '1.0\\n' > {BUILD}/VERSION; rm -f {TEMP}/deploy.lock"]
    )
    peers = fleet.hosts[3:7]
    for host in peers:
        fleet.run_in(host, ["rm", "-rf", APP, "/srv/unhealthy"])
    return peers


def env_file(tmp_path: Path, **extra: Any) -> Path:
    """Write the example's production config with ``extra`` keys under ``murder``."""
    config = yaml.safe_load((EXAMPLES / "deploy" / "production.yaml").read_text())
    config["murder"].update(extra)
    path = tmp_path / f"prod-{len(list(tmp_path.glob('prod-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fab_command(ssh_config: Path, wheels: Path, *args: str, **env: str) -> dict[str, Any]:
    environ = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FABRIC_MURDER_WHEEL_DIR": str(wheels),
        "FABRIC_MURDER_POLL_INTERVAL": "0.5",
        **env,
    }
    command = [str(Path(sys.executable).with_name("fab")), "-S", str(ssh_config), *args]
    return {"args": command, "cwd": EXAMPLES, "env": environ, "text": True}


def fab(ssh_config: Path, wheels: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``fab`` in the examples directory, as a user would."""
    spec = fab_command(ssh_config, wheels, *args, **env)
    return subprocess.run(**spec, capture_output=True, timeout=300)


def currents(fleet: Fleet, hosts: list[Host]) -> list[str]:
    return [current(fleet, h) for h in hosts]


def tree(fleet: Fleet, host: Host, *paths: str) -> str:
    """Return every path, mode, size and mtime under ``paths`` on a host (a change detector)."""
    script = 'for p in "$@"; do [ -e "$p" ] && find "$p" -printf "%p %m %s %T@ %l\\n"; done; true'
    return str(fleet.run_in(host, ["sh", "-c", script, "tree", *paths]).stdout)


def test_a_subset_deploy_changes_only_those_peers_and_minus_h_is_refused(
    fleet: Fleet, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    config = str(env_file(tmp_path))
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "f1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert currents(fleet, prod) == ["releases/f1"] * 4

    report = tmp_path / "f2.json"
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "f2",
              "--peers", "web1.prod,web3.prod", "--report", str(report))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert currents(fleet, prod) == ["releases/f2", "releases/f1", "releases/f2", "releases/f1"]
    # the restart hook restarted exactly the hosts that switched
    assert sorted(re.findall(r"\[(\S+)\] restarted on releases/f2", out.stdout)) == [
        "web1.prod", "web3.prod",
    ]  # fmt: skip
    data = read_report(report)
    assert (data["ok"], data["exit"], data["tag"], data["task"]) == (True, 0, "f2", "deploy")
    assert sorted(data["hosts"]) == ["web1.prod", "web3.prod"]
    assert all(h["switched"] and h["previous"] == "f1" for h in data["hosts"].values())
    assert all(h["bytes"] == h["from_seeder"] + h["from_peers"] > 0 for h in data["hosts"].values())

    # -H is refused with a sentence, and nothing happens anywhere
    out = fab(ssh_config, wheels, "-H", "web2.prod", "-f", config, "murder.deploy", "--tag", "f3")
    assert out.returncode == 1
    assert "refuse Fabric's -H/--hosts" in out.stderr and "--peers" in out.stderr
    assert "Traceback" not in out.stderr
    out = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--peers", "web9.prod")
    assert out.returncode == 1
    assert "web9.prod is not in murder.peers" in out.stderr
    assert currents(fleet, prod) == ["releases/f2", "releases/f1", "releases/f2", "releases/f1"]

    # rollback after this partial deploy: the switched hosts go back, the others stay
    out = fab(ssh_config, wheels, "-f", config, "murder.rollback")
    assert out.returncode == 0, out.stdout + out.stderr
    assert currents(fleet, prod) == ["releases/f1"] * 4
    assert "[web2.prod] stays on f1 (never switched to f2)" in out.stdout
    # rollback --to names a release; a host that lacks it is named and nothing moves
    out = fab(ssh_config, wheels, "-f", config, "murder.rollback", "--to", "f2")
    assert out.returncode == 1
    assert "[web2.prod] release 'f2' is not in /srv/app/releases" in out.stderr
    assert currents(fleet, prod) == ["releases/f1"] * 4
    out = fab(ssh_config, wheels, "-f", config, "murder.rollback", "--to", "f2",
              "--peers", "web3.prod")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert currents(fleet, prod) == ["releases/f1", "releases/f1", "releases/f2", "releases/f1"]


def test_env_vars_reach_the_users_own_tasks_and_host_lists_parse_from_a_string(
    fleet: Fleet, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    # FABRIC_MURDER_TAG reaches the example's own root-level deploy task
    config = str(env_file(tmp_path))
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--peers", "web2.prod",
              FABRIC_MURDER_TAG="from-env")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert current(fleet, prod[1]) == "releases/from-env"

    # peers as a YAML list in a user config file, and as a string in the environment
    home = tmp_path / "home"
    home.mkdir()
    (home / ".fabric.yaml").write_text(yaml.safe_dump({"murder": {"peers": NAMES}}))
    base = yaml.safe_load((EXAMPLES / "deploy" / "production.yaml").read_text())
    del base["murder"]["peers"]
    no_peers = tmp_path / "no-peers.yaml"
    no_peers.write_text(yaml.safe_dump(base))
    out = fab(ssh_config, wheels, "-f", str(no_peers), "murder.deploy", "--dry-run", "--tag", "e1",
              HOME=str(home), FABRIC_MURDER_PEERS="web3.prod web4.prod")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "release e1 to 2 peer(s)" in out.stdout
    assert "[web3.prod] would download release e1" in out.stdout
    assert "web1.prod" not in out.stdout


def test_a_dry_run_and_invokes_dry_print_the_plan_and_change_nothing(
    fleet: Fleet, build: Host, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    config = str(env_file(tmp_path))
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "d0", "--peers", "web1.prod")
    assert out.returncode == 0, out.stdout + out.stderr
    watched = [(h, (APP,)) for h in prod] + [(build, (TEMP, BUILD))]
    before = [tree(fleet, h, *paths) for h, paths in watched]
    report = tmp_path / "dry.json"
    out = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--dry-run", "--tag", "d1",
              "--report", str(report))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dry run: release d1 to 4 peer(s); nothing was changed" in out.stdout
    assert "[web1.prod] would point /srv/app/current at releases/d1 (now d0)" in out.stdout
    assert "[web2.prod] would download release d1 into /srv/app/releases/d1" in out.stdout
    assert "[build.prod] would pack /srv/build as release d1 and seed it" in out.stdout
    data = read_report(report)
    assert data["dry_run"] is True and data["hosts"] == {} and data["steps"]
    out = fab(ssh_config, wheels, "--dry", "-f", config, "murder.deploy", "--tag", "d1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dry run: release d1" in out.stdout
    out = fab(ssh_config, wheels, "--dry", "-f", config, "murder.publish", "--tag", "d0")
    assert out.returncode == 1 and "has no dry run" in out.stderr
    assert [tree(fleet, h, *paths) for h, paths in watched] == before


def test_the_json_report_of_a_failed_deploy_says_why_and_the_exit_code_agrees(
    fleet: Fleet, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    report = tmp_path / "failed.json"
    config = str(env_file(tmp_path, report=str(report)))  # the config key, not the flag
    out = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--tag", "x1",
              "--files-path", "/srv/no-such-build")  # fmt: skip
    assert out.returncode == 1
    data = read_report(report)
    assert (data["ok"], data["exit"], data["tag"]) == (False, 1, "x1")
    assert "/srv/no-such-build" in data["error"]
    assert currents(fleet, prod) == [""] * 4


def test_two_deploys_at_once_one_is_refused_naming_the_other_and_ctrl_c_unlocks(
    fleet: Fleet, build: Host, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    config = str(env_file(tmp_path, upload_rate_limit=40000))  # a slow first deploy
    lock = f"{TEMP}/deploy.lock"

    def locked() -> str:
        return str(fleet.run_in(build, ["cat", lock], check=False).stdout)

    first = subprocess.Popen(
        **fab_command(ssh_config, wheels, "-f", config, "murder.deploy", "--tag", "l1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        holder = wait_until(lambda: "tag=l1" in locked() and locked(), 60, "the first lock")
        second = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--tag", "l2")
        assert first.poll() is None, "the first deploy ended before the second one tried"
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr and "deploying l1 to /srv/app" in second.stderr
        assert "another deploy holds the lock" in second.stderr
        assert f"pid={first.pid}" in holder
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, first.stdout.read() if first.stdout else ""
    assert locked() == ""

    # a lock whose holder's process is gone is stale: reported, and --force clears it
    stale = f"token=abc\nwho=ci@{os.uname().nodename}\nmachine={os.uname().nodename}\n"
    stale += "pid=999999\nsince=2026-12-01T00:00:00Z\ntag=old\ndestination=/srv/app\n"
    fleet.run_in(build, ["sh", "-c", f"printf %s '{stale}' > {lock}"])
    out = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--tag", "l3")
    assert out.returncode == 1
    assert "stale: its process is gone" in out.stderr and "--force clears it" in out.stderr
    # distribute-files shares the tracker and peer_port too: the same lock stops it
    out = fab(ssh_config, wheels, "-f", config, "murder.distribute-files", "--tag", "l3")
    assert out.returncode == 1 and "another deploy holds the lock" in out.stderr, out.stderr
    assert fleet.run_in(build, ["cat", lock]).stdout == stale  # the stale lock, untouched
    out = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--tag", "l3", "--force",
              "--upload-rate-limit", "0")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert currents(fleet, prod) == ["releases/l3"] * 4 and locked() == ""


def test_hooks_run_at_each_stage_and_a_failing_one_before_publishing_leaves_current(
    fleet: Fleet, build: Host, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    stages = ["starting", "distributing", "distributed", "publishing", "published",
              "finishing", "finished", "failed"]  # fmt: skip
    hooks: dict[str, list[str]] = {stage: ["checks:audit"] for stage in stages}
    hooks["distributed"].append("checks:version_file")
    config = str(env_file(tmp_path, hooks=hooks))
    audit = tmp_path / "audit.jsonl"
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "h1", "--peers",
              "web1.prod,web2.prod", DEPLOY_AUDIT_LOG=str(audit))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["stage"] for line in lines] == stages[:-1]
    assert {line["tag"] for line in lines} == {"h1"}
    assert lines[0]["hosts"] == ["web1.prod", "web2.prod"] and lines[0]["received"] == []
    assert lines[2]["received"] == ["web1.prod", "web2.prod"] and lines[2]["switched"] == []
    assert lines[1]["probed"] == [] and lines[2]["probed"] == ["build.prod", *lines[0]["hosts"]]
    assert lines[4]["switched"] == ["web1.prod", "web2.prod"]

    audit.unlink()
    fleet.run_in(build, ["rm", f"{BUILD}/VERSION"])
    try:
        out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "h2",
                  DEPLOY_AUDIT_LOG=str(audit))  # fmt: skip
    finally:
        fleet.run_in(build, ["sh", "-c", f"printf '1.0\\n' > {BUILD}/VERSION"])
    assert out.returncode == 1
    assert "the distributed hook version_file failed" in out.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["stage"] for line in lines] == [*stages[:3], "failed"]
    assert "version_file" in lines[-1]["error"]
    assert currents(fleet, prod) == ["releases/h1", "releases/h1", "", ""]


def test_linked_dirs_and_files_are_shared_across_releases_and_survive_cleanup(
    fleet: Fleet, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    config = str(env_file(tmp_path, linked_dirs=["log"], linked_files=["config/app.yml"],
                          keep_releases=1))  # fmt: skip
    web1 = prod[0]
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "s1", "--peers", "web1.prod")
    assert out.returncode == 0, out.stdout + out.stderr
    fleet.run_in(web1, ["sh", "-c", f"echo first > {APP}/current/log/app.log"])
    fleet.run_in(web1, ["sh", "-c", f"echo 'db: x' > {APP}/current/config/app.yml"])
    out = fab(ssh_config, wheels, "-f", config, "deploy", "--tag", "s2", "--peers", "web1.prod")
    assert out.returncode == 0, out.stdout + out.stderr
    assert current(fleet, web1) == "releases/s2"
    assert fleet.run_in(web1, ["cat", f"{APP}/current/log/app.log"]).stdout == "first\n"
    assert fleet.run_in(web1, ["cat", f"{APP}/current/config/app.yml"]).stdout == "db: x\n"
    link = fleet.run_in(web1, ["readlink", f"{APP}/releases/s2/log"]).stdout.strip()
    assert link == f"{APP}/shared/log"
    # cleanup (keep_releases 1) removed s1 and never touches shared/
    assert fleet.run_in(web1, ["ls", f"{APP}/releases"]).stdout.split() == ["s2"]
    assert fleet.run_in(web1, ["cat", f"{APP}/shared/log/app.log"]).stdout == "first\n"


def test_a_rolling_publish_whose_check_fails_in_the_second_batch_puts_every_host_back(
    fleet: Fleet, prod: list[Host], ssh_config: Path, wheels: Path, tmp_path: Path
) -> None:
    config = str(env_file(tmp_path))
    out = fab(ssh_config, wheels, "-f", config, "canary", "--tag", "r1")  # the example's canary
    assert out.returncode == 0, out.stdout + out.stderr
    assert "batch 4 of 4: web4.prod" in out.stdout
    assert currents(fleet, prod) == ["releases/r1"] * 4

    fleet.run_in(prod[2], ["touch", "/srv/unhealthy"])  # web3: the first host of batch 2
    report = tmp_path / "rolling.json"
    check = "test ! -e /srv/unhealthy"
    out = fab(ssh_config, wheels, "-f", config, "murder.deploy", "--tag", "r2", "--batch-size",
              "50%", "--health-check", check, "--report", str(report))  # fmt: skip
    assert out.returncode == 1
    assert "the health check failed in batch 2 of 2" in out.stderr
    assert "[web3.prod]" in out.stderr
    assert currents(fleet, prod) == ["releases/r1"] * 4
    data = read_report(report)
    assert data["ok"] is False and "batch 2 of 2" in data["error"]


def test_the_report_schema_in_the_docs_is_the_one_the_code_writes() -> None:
    assert documented_schema() == SCHEMA
