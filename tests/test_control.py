"""The control side without hosts: the watch, the daemons' start and stop, the verdict.

Every test runs on a fake pool whose connections answer each command with
a scripted result, so none needs root, namespaces or sshd.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pkgutil
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from invoke import Context, Result
from invoke.exceptions import Exit

import fabmurder
import fabmurder.tasks as tasks_mod
from fabmurder import contract, daemons, distribution, pipeline, watch
from fabmurder import plan as plan_mod
from fabmurder.config import settings
from fabmurder.errors import DeployError
from fabmurder.options import Options
from fabmurder.plan import Plan, make_plan
from fabmurder.probe import Probe
from fabmurder.remote import ConnectionPool
from fabmurder.report import DeployReport, Event, HostReport

Handler = Callable[[str, str], Result]
PEERS = ("web1", "web2", "web3")
RELEASE = 1000


class FakeConnection:
    """A connection whose commands are answered by a handler(host, command)."""

    def __init__(self, host: str, handler: Handler, log: list[tuple[str, str]]) -> None:
        self.host = self.original_host = host
        self.handler = handler
        self.log = log

    def run(self, command: str, **kwargs: Any) -> Result:
        self.log.append((self.host, command))
        return self.handler(self.host, command)

    def get(self, remote: str, local: str) -> None:
        Path(local).write_bytes(b"d8:announce0:e")

    def put(self, local: str, remote: str) -> None:
        self.log.append((self.host, f"put {remote}"))

    def close(self) -> None:
        pass


class FakePool(ConnectionPool):
    """A real pool (fan-out, results by host) over fake connections."""

    def __init__(self, handler: Handler, parallel: int = 8) -> None:
        super().__init__(Context().config, parallel=parallel)
        self.handler = handler
        self.log: list[tuple[str, str]] = []
        self.fakes: dict[str, FakeConnection] = {}

    def get(self, host: str) -> Any:
        return self.fakes.setdefault(host, FakeConnection(host, self.handler, self.log))

    def host_of(self, conn: Any) -> str:
        return str(conn.host)

    def commands(self, word: str) -> list[str]:
        """Return the hosts that ran a command containing ``word``, in order."""
        return [host for host, command in self.log if word in command]


def ok(data: object = None, exited: int = 0) -> Result:
    return Result(stdout=json.dumps(data if data is not None else {}) + "\n", exited=exited)


def status(
    state: str, done: int, installed: bool = False, error: str | None = None
) -> dict[str, Any]:
    return {
        "role": "peer", "tag": "v1", "info_hash": "ab" * 20, "pid": 42, "state": state,
        "installed": installed, "error": error, "total": RELEASE, "done": done, "uploaded": 0,
        "from_seeder": done, "from_peers": 0, "hash_failures": 0, "peers": 2,
        "started_at": 100.0, "downloaded_at": 101.0 if done == RELEASE else None,
        "installed_at": 102.5 if installed else None, "updated_at": 102.5,
    }  # fmt: skip


def polls(script: dict[str, Callable[[int], Result]]) -> Handler:
    """Answer each host's n-th poll with ``script[host](n)``; log tails name the log."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def handler(host: str, command: str) -> Result:
        if command.startswith("tail "):
            return Result(stdout="fabmurder: peer failed: disk full\n")
        if " daemon status " in command:
            return ok({"alive": True, "pid": 7})
        with lock:
            counts[host] = counts.get(host, 0) + 1
            n = counts[host]
        return script[host](n)

    return handler


def plan_for(**options: Any) -> Plan:
    base: Options = {"seeder": "seed1", "peers": list(PEERS), "tracker": "seed1", "tag": "v1"}
    s = settings(Context(), **{**base, **options})
    addresses = {h: f"10.0.0.{i}" for i, h in enumerate(["seed1", *PEERS], 1)}
    return Plan(s, Probe(addresses=addresses))


def started(plan: Plan) -> tuple[DeployReport, dict[str, watch.Watch], list[Event]]:
    events: list[Event] = []
    report = DeployReport("v1", hosts={h: HostReport(h) for h in PEERS}, on_event=events.append)
    report.info_hash = "ab" * 20
    now = watch.time.monotonic()
    watches = {h: watch.Watch(report.hosts[h], started=now, polled=now) for h in PEERS}
    return report, watches, events


def installed_after(n: int) -> Callable[[int], Result]:
    def answer(i: int) -> Result:
        done = min(RELEASE, RELEASE * i // n)
        record = status("seeding" if i >= n else "downloading", done, installed=i >= n)
        return ok({"status": record, "alive": True, "error": None})

    return answer


# -- the watch ------------------------------------------------------------------------------------


def test_the_watch_follows_every_peer_to_installed_through_the_poll_command() -> None:
    plan = plan_for(poll_interval=0.05)
    pool = FakePool(polls({h: installed_after(3) for h in PEERS}))
    report, watches, events = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert report.failures == {} and report.succeeded == list(PEERS)
    assert {r.seconds for r in report.hosts.values()} == {2.5}  # the agent's own clock
    polled = [c for _, c in pool.log if " poll " in c]
    assert all(contract.status_file("peer", "v1") in c for c in polled)
    assert "cat " not in " ".join(polled) and "kill -0" not in " ".join(polled)
    assert [e.host for e in events if e.kind == "host" and e.message == "installed"] != []
    assert events[-1].kind == "progress" and events[-1].data["done"] == 3


def test_a_lost_host_a_dead_agent_and_a_failed_agent_each_fail_with_their_reason() -> None:
    plan = plan_for(poll_interval=0.05)

    def lost(n: int) -> Result:
        raise OSError("Connection reset by peer")

    def dead(n: int) -> Result:
        return ok({"status": status("downloading", 10), "alive": False, "error": None})

    def failed(n: int) -> Result:
        record = status("failed", 10, error="sha256 mismatch")
        return ok({"status": record, "alive": False, "error": None})

    pool = FakePool(polls({"web1": lost, "web2": dead, "web3": failed}))
    report, watches, _ = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert report.failures == {
        "web1": "lost contact during the download: cannot connect: Connection reset by peer",
        "web2": "the peer agent exited without installing (downloading): "
        "fabmurder: peer failed: disk full",
        "web3": "sha256 mismatch",
    }
    assert watches["web1"].lost and not watches["web2"].lost and not watches["web3"].lost


def test_a_peer_past_its_timeout_fails_naming_its_state_and_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "GRACE", 0.0)
    monkeypatch.setattr(plan_mod, "START_WAVE", 0.0)  # no start phase to wait out here
    plan = plan_for(poll_interval=0.05, timeout=0.3)
    stuck = {"status": status("downloading", 250), "alive": True, "error": None}
    script = {h: installed_after(2) for h in PEERS} | {"web2": lambda n: ok(stuck)}
    report, watches, _ = started(plan)
    watch.watch(FakePool(polls(script)), plan, watches, RELEASE, report)
    assert report.failures == {"web2": "timed out after 0 s (downloading, 250 of 1000 bytes)"}


def test_a_host_that_stops_answering_a_poll_is_failed_before_the_deadline() -> None:
    plan = plan_for(poll_interval=0.05, timeout=1)  # a poll may hang 5 s at least
    release = threading.Event()

    def hangs(n: int) -> Result:
        release.wait(30)
        raise OSError("closed")

    report, watches, _ = started(plan)
    began = watch.time.monotonic()
    try:
        script = {h: installed_after(1) for h in PEERS} | {"web3": hangs}
        watch.watch(FakePool(polls(script)), plan, watches, RELEASE, report)
    finally:
        release.set()
    assert report.failures == {"web3": "no answer for 5 s during the download"}
    assert watches["web3"].lost == "no answer"
    assert watch.time.monotonic() - began < 20


def fed_plan(**options: Any) -> Plan:
    """A plan with fabmurder's own tracker: the peers report, and the watch follows the feed."""
    from fabmurder.plan import urls

    plain = plan_for(**options)
    ids = {h: f"id-{h}" for h in PEERS}
    tracker = urls(plain.s, "10.0.0.1", "tok", "dep")
    return Plan(plain.s, plain.found, "dep", "tok", tracker, ids)


def progress(seq: int, changes: dict[str, dict[str, Any]]) -> Result:
    """A ``/progress`` reply, as the tracker host's ``stats`` command prints it."""
    totals = {"reporters": 3, "installed": 0, "failed": 0, "silent": 0, "done": 0, "total": 0}
    return ok({"seq": seq, "totals": totals, "changes": changes, "swarm": {"seeders": 1}})


def feed_report(state: str, installed: bool = False, silent: bool = False) -> dict[str, Any]:
    return {
        "addr": "10.0.0.2", "state": state, "installed": installed, "error": None, "done": 5,
        "total": RELEASE, "from_seeder": 5, "from_peers": 0, "uploaded": 0, "silent": silent,
        "seq": 1,
    }  # fmt: skip


def test_with_a_feed_each_peer_is_read_over_ssh_once_when_its_report_says_it_installed() -> None:
    plan = fed_plan(poll_interval=0.05)
    reads = iter(
        [
            progress(3, {f"id-{h}": feed_report("downloading") for h in PEERS}),
            progress(4, {"id-web1": feed_report("seeding", installed=True), "id-x": {}}),
            progress(6, {f"id-{h}": feed_report("seeding", installed=True) for h in PEERS[1:]}),
        ]
    )
    done = installed_after(1)

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            return next(reads, progress(6, {}))
        return done(1)

    pool = FakePool(handler)
    report, watches, events = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert all(r.ok and r.seconds == 2.5 for r in report.hosts.values())
    assert sorted(pool.commands(" poll ")) == sorted(PEERS)  # one read each, when it installed
    follows = [c for _, c in pool.log if " stats " in c]
    assert pool.commands(" stats ") == ["seed1"] * len(follows)
    assert "/progress/tok?info_hash=" + "ab" * 20 + "&since=0" in follows[0]
    assert "--while-seq 3" in follows[1] and "--while-seq 4" in follows[2]
    assert not [e for e in events if e.kind == "warning"]
    assert events[-1].kind == "progress" and events[-1].data["swarm"] == {"seeders": 1}


def test_a_peer_the_tracker_marks_silent_is_read_and_failed_if_its_agent_is_gone() -> None:
    plan = fed_plan(poll_interval=0.05)
    reads = iter(
        [
            progress(3, {f"id-{h}": feed_report("downloading") for h in PEERS}),
            progress(4, {"id-web2": feed_report("downloading", silent=True)}),
            progress(
                6, {f"id-{h}": feed_report("seeding", installed=True) for h in ("web1", "web3")}
            ),
        ]
    )
    done, gone = installed_after(1), ok({"status": status("downloading", 5), "alive": False})

    def handler(host: str, command: str) -> Result:
        if command.startswith("tail "):
            return Result(stdout="killed\n")
        if " stats " in command:
            return next(reads, progress(6, {}))
        return gone if host == "web2" else done(1)

    pool = FakePool(handler)
    report, watches, events = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert [h for h, r in report.hosts.items() if r.ok] == ["web1", "web3"]
    assert report.hosts["web2"].reason == (
        "the peer agent exited without installing (downloading): killed"
    )
    assert pool.commands(" poll ").count("web2") == 1


def test_a_feed_that_fails_is_dropped_and_every_peer_is_polled() -> None:
    plan = fed_plan(poll_interval=0.05)
    script = {h: installed_after(3) for h in PEERS}
    answer = polls(script)

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            return Result(stdout="", stderr="fabmurder: 404 Not Found\n", exited=1)
        return answer(host, command)

    pool = FakePool(handler)
    report, watches, events = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert all(r.ok for r in report.hosts.values())
    # tried FEED_TRIES times in a row, then dropped
    assert pool.commands("--while-seq") == ["seed1"] * watch.FEED_TRIES
    assert all(pool.commands(" poll ").count(h) == 3 for h in PEERS)
    warnings = [e.message for e in events if e.kind == "warning"]
    why = "progress: fabmurder: 404 Not Found (exit 1)"
    assert warnings == [f"the tracker's progress feed failed ({why}): polling every peer"]


def test_a_feed_read_that_fails_once_is_tried_again_and_the_feed_kept() -> None:
    plan = fed_plan(poll_interval=0.05)
    reads = [0]

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            reads[0] += 1
            if reads[0] == 1:  # a loaded tracker missed the long poll's timeout once
                return Result(stdout="", stderr="fabmurder: timed out\n", exited=1)
            changes = {f"id-{h}": feed_report("seeding", installed=True) for h in PEERS}
            return progress(reads[0], changes)
        return installed_after(1)(1)

    pool = FakePool(handler)
    report, watches, events = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert all(r.ok for r in report.hosts.values())
    assert [e for e in events if e.kind == "warning"] == []
    assert len(pool.commands("--while-seq")) >= 2
    # each peer read once, when the feed said it installed: no one fell back to polling
    assert sorted(pool.commands(" poll ")) == sorted(PEERS)


def test_a_peer_that_never_reports_is_read_over_ssh_until_it_answers() -> None:
    plan = fed_plan(poll_interval=0.05)
    done = installed_after(1)

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            return progress(0, {})  # no agent reaches the tracker
        return done(1)

    pool = FakePool(handler)
    report, watches, _ = started(plan)
    for w in watches.values():
        w.polled -= watch.UNHEARD  # started UNHEARD s ago
    watch.watch(pool, plan, watches, RELEASE, report)
    assert all(r.ok for r in report.hosts.values())
    assert sorted(pool.commands(" poll ")) == sorted(PEERS)


def test_a_poll_waits_on_the_host_only_while_every_peer_has_a_thread() -> None:
    plan = plan_for(poll_interval=0.2, parallel=8)
    pool = FakePool(polls({h: installed_after(2) for h in PEERS}))
    report, watches, _ = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report)
    assert {c.rsplit("--wait ", 1)[1] for _, c in pool.log if " poll " in c} == {"0.20"}
    few = plan_for(poll_interval=0.2, parallel=2)
    pool = FakePool(polls({h: installed_after(2) for h in PEERS}))
    report, watches, _ = started(few)
    watch.watch(pool, few, watches, RELEASE, report)
    assert {c.rsplit("--wait ", 1)[1] for _, c in pool.log if " poll " in c} == {"0.00"}


def test_the_poll_command_answers_at_once_for_a_gone_agent_and_waits_out_a_due_end(
    tmp_path: Path,
) -> None:
    from fabmurder.host import statusfile

    path = tmp_path / "peer-v1.status.json"
    statusfile.write_status(str(path), status("downloading", 400))
    began = watch.time.monotonic()
    reply = statusfile.poll(str(path), str(tmp_path / "peer-v1.pid"), wait=5.0)
    assert reply["alive"] is False and reply["status"] == status("downloading", 400)
    assert watch.time.monotonic() - began < 2
    assert (
        statusfile.poll(str(tmp_path / "none.json"), str(tmp_path / "none.pid"))["status"] is None
    )
    record = contract.check_status(status("downloading", 900))
    assert statusfile._end_due(record, (0.0, 500), 1.0, 0.5)  # 100 bytes left at 400 B/s
    assert not statusfile._end_due(record, (0.0, 890), 1.0, 0.5)  # 100 bytes left at 10 B/s
    assert statusfile._end_due(
        contract.check_status(status("verifying", RELEASE)), (0.0, 0), 1.0, 0.1
    )


# -- the verdict from finish's reply ---------------------------------------------------------------


def finished(record: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """A peer host's ``finish --role peer --tag v1 --clean`` reply, holding ``record``."""
    stop = {"stopped": True, "pid": 42, "reason": "terminated", "pid_file": "/t/peer-v1.pid"}
    final = {"status": record, "error": error}
    return {"stopped": [stop], "clean": {"removed": []}, "statuses": {"peer": final}}


def test_finish_replies_are_parsed_with_each_status_checked_as_a_poll_checks_it() -> None:
    record = status("stopped", RELEASE, installed=True)
    reply = contract.parse_finish(json.dumps(finished(record)) + "\n")
    assert reply["statuses"]["peer"] == {"status": record, "error": None}
    assert reply["stopped"][0]["pid"] == 42
    assert contract.parse_finish("") == {"stopped": [], "clean": None}  # no agent on the host
    gone = contract.parse_finish(json.dumps(finished(None, "cannot read status file x")))
    assert gone["statuses"]["peer"] == {"status": None, "error": "cannot read status file x"}
    hostile = [
        ("installed, trust me\n", "finish printed no reply"),
        (json.dumps({"stopped": "all"}), "no list of stop records"),
        (json.dumps({**finished(record), "statuses": ["peer"]}), "not an object"),
        (json.dumps(finished({**record, "done": "all of it"})), "'done' has the wrong type"),
        (json.dumps(finished({**record, "installed": 1})), "'installed' has the wrong type"),
        (json.dumps(finished({**record, "role": "seed"})), "a seed status as the peer's"),
        (json.dumps({"stopped": [], "statuses": {"tracker": {}}}), "'tracker' that is not one"),
    ]
    for text, why in hostile:
        with pytest.raises(contract.StatusError, match=why):
            contract.parse_finish(text)


def test_with_the_finish_verdict_a_peer_reported_installed_is_not_polled_nor_ok_yet() -> None:
    plan = fed_plan(poll_interval=0.05)
    reads = iter([progress(3, {f"id-{h}": feed_report("seeding", installed=True) for h in PEERS})])

    def handler(host: str, command: str) -> Result:
        if " stats " in command:
            return next(reads, progress(3, {}))
        raise AssertionError(f"no peer is read over SSH: {command}")

    pool = FakePool(handler)
    report, watches, events = started(plan)
    watch.watch(pool, plan, watches, RELEASE, report, verdict="finish")
    assert pool.commands(" poll ") == []
    assert all(w.provisional for w in watches.values())
    assert report.succeeded == [] and report.failures == {h: "unknown" for h in PEERS}
    assert events[-1].kind == "progress" and events[-1].data["done"] == 3
    assert not [e for e in events if e.kind == "host"]  # no verdict before finish's reply


def confirmed(replies: dict[str, Any]) -> tuple[DeployReport, dict[str, watch.Watch], list[Event]]:
    """Confirm each of PEERS, taken as installed on the feed's word, from ``replies``."""
    from fabmurder import peers
    from fabmurder.remote import HostResults

    report, watches, events = started(plan_for())
    for w in watches.values():
        w.provisional = True
        w.report.state, w.report.bytes = "seeding", RELEASE  # as the feed said
    results: HostResults[Any] = HostResults(replies)
    peers.confirm(watches, results, report)
    return report, watches, events


def test_a_peer_the_tracker_reported_installed_fails_when_its_final_status_says_otherwise() -> None:
    from fabmurder import peers
    from fabmurder.errors import HostError

    done = {**status("stopped", RELEASE, installed=True), "cpu_seconds": 0.75, "hash_failures": 2}
    failed = status("failed", 600, error="sha256 mismatch")
    report, watches, events = confirmed(
        {
            "web1": contract.parse_finish(json.dumps(finished(done))),
            "web2": contract.parse_finish(json.dumps(finished(failed))),
            "web3": HostError("web3", "finish peer: finish printed no reply: 'ok'"),
        }
    )
    web1 = report.hosts["web1"]
    assert web1.ok and web1.reason is None
    # the report's figures are the final status's, as a poll's were
    assert (web1.seconds, web1.started_at, web1.installed_at) == (2.5, 100.0, 102.5)
    assert (web1.cpu_seconds, web1.hash_failures, web1.from_seeder) == (0.75, 2, RELEASE)
    assert report.failures == {
        "web2": "the tracker reported it installed, but its status says failed: sha256 mismatch",
        "web3": "could not confirm the install: finish peer: finish printed no reply: 'ok'",
    }
    assert report.hosts["web2"].bytes == 600 and not any(w.provisional for w in watches.values())
    verdicts = {e.host: e.message for e in events if e.kind == "host"}
    assert verdicts == {"web1": "installed", "web2": "failed", "web3": "failed"}
    with pytest.raises(DeployError, match="2 of 3 peer"):
        peers.judge(plan_for(), report)
    assert peers.judge(plan_for(max_failed_peers=2), report).succeeded == ["web1"]


def test_a_peer_finish_did_not_reach_or_that_printed_no_status_is_not_confirmed() -> None:
    reply = contract.parse_finish(json.dumps({"stopped": [], "clean": None}))
    unread = contract.parse_finish(json.dumps(finished(None, "cannot read status file x")))
    report, _, _ = confirmed({"web1": reply, "web2": unread})  # web3: finish never ran
    assert report.failures == {
        "web1": "could not confirm the install: finish printed no status of the peer agent",
        "web2": "could not confirm the install: cannot read status file x",
        "web3": "could not confirm the install: finish did not run there",
    }
    record = status("stopped", RELEASE, installed=True) | {"downloaded_at": None, "from_seeder": 0}
    report, _, events = confirmed({h: contract.parse_finish(json.dumps(finished(record)))
                                   for h in PEERS})  # fmt: skip
    assert {r.state for r in report.hosts.values()} == {"already installed"}
    assert [e.message for e in events if e.kind == "host"] == ["already installed"] * 3


def whole_run(finish_reply: Callable[[str], Result], **murder: Any) -> tuple[FakePool, Context]:
    """A fake fleet for a whole run: the feed says every peer installed; finish_reply answers."""
    from fabmurder import install

    c = Context()
    c.config.murder = {
        "tracker": "seed1", "seeder": "seed1", "peers": list(PEERS), "tag": "v1",
        "files_path": "/srv/build", "destination_path": "/srv/app", **murder,
    }  # fmt: skip
    digest = install.wheel_set(settings(c)).digest
    info = {"info_hash": "ab" * 20, "sha256": "cd" * 32, "torrent": "/t/v1.torrent", "size": 9}
    ids: dict[str, str] = {}
    lock = threading.Lock()
    layout: dict[str, list[str]] = {h: ["release\t1.0\tv0"] for h in PEERS}

    def handler(host: str, command: str) -> Result:
        if command.startswith('printf "addr='):
            return Result(stdout=f"addr=10.9.9.9 5 10.0.0.{len(host)} 22\nstamp={digest}\n")
        if "set -C" in command:
            return Result(stdout="made\n")
        if " token " in command:
            return ok({"file": "/t/tracker.token", "token": "tok", "new": False})
        if " create " in command:
            return ok(info)
        if " daemon start " in command and "--report-id " in command:
            with lock:
                ids[host] = command.split("--report-id ", 1)[1].split()[0]
            return ok({"pid": 5})
        if " stats " in command:
            changes = {ids[h]: feed_report("seeding", installed=True) for h in ids}
            return progress(1, changes) if "--while-seq 0" in command else progress(1, {})
        if " finish " in command:
            return finish_reply(host) if host != "seed1" else ok({"stopped": [], "clean": {}})
        if command.startswith("d="):  # the release listing
            return Result(stdout="\n".join([*layout[host], "release\t2.0\tv1"]) + "\n")
        if "mv -T -- current.tmp-" in command:
            lines = ["current\treleases/v1", *layout[host], "release\t2.0\tv1"]
            return Result(stdout="\n".join(lines) + "\n")
        if "for t in " in command:  # removing old releases
            return Result(stdout="v0\n")
        return ok({"pid": 5})

    return FakePool(handler), c


def test_a_whole_run_takes_each_peers_verdict_from_finish_and_polls_none(wheel_dir: Path) -> None:
    def finish_reply(host: str) -> Result:
        if host == "web3":
            return Result(stdout='{"stopped": [], "statuses": {"peer": {"status": "installed"}}}\n')
        return ok(finished(status("stopped", RELEASE, installed=True)))

    pool, c = whole_run(finish_reply, wheel_dir=str(wheel_dir))
    with pytest.raises(DeployError) as caught:
        distribution.distribute(pool, settings(c))
    assert pool.commands(" poll ") == []
    report = caught.value.report
    assert report.succeeded == ["web1", "web2"] and report.hosts["web1"].seconds == 2.5
    assert list(report.failures) == ["web3"]
    assert report.failures["web3"].startswith("could not confirm the install: finish peer: ")


def test_a_deploy_publishes_only_confirmed_peers_and_cleans_up_on_the_switchs_listing(
    wheel_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fabmurder import flow

    def finish_reply(host: str) -> Result:
        installed = host != "web2"
        state = "stopped" if installed else "failed"
        return ok(finished(status(state, RELEASE, installed=installed, error=None)))

    pool, c = whole_run(finish_reply, wheel_dir=str(wheel_dir), max_failed_peers=1,
                        keep_releases=1)  # fmt: skip
    monkeypatch.setattr(flow, "open_pool", lambda c, s: pool)
    deployed = flow.run(c)
    assert deployed.report.failures == {
        "web2": "the tracker reported it installed, but its status says failed"
    }
    assert pool.commands(" poll ") == []
    # web2 is never switched (sorted: the switch fans out, and the hosts' order is the threads')
    assert sorted(pool.commands("mv -T -- current.tmp-")) == ["web1", "web3"]
    # one listing per switched host (publish's check), none for the cleanup
    assert sorted(pool.commands('find "$d/releases/"')) == ["web1", "web1", "web3", "web3"]
    assert sorted(pool.commands("for t in ")) == ["web1", "web3"]
    assert deployed.removed == {"web1": ["v0"], "web3": ["v0"]}


def test_cleanup_acts_on_the_listing_it_is_given_and_reads_only_the_hosts_missing_from_it() -> None:
    from fabmurder.layout import Layout, parse_inspect
    from fabmurder.switching import cleanup_on

    lay = Layout("/srv/app")
    lines = "current\treleases/v3\nrelease\t1\tv1\nrelease\t2\tv2\nrelease\t3\tv3\n"

    def handler(host: str, command: str) -> Result:
        if command.startswith("d="):
            return Result(stdout=lines)
        return Result(stdout="v1\n" if "for t in " in command else "")

    pool = FakePool(handler)
    listed = {"web1": parse_inspect("web1", lay, lines)}
    removed = cleanup_on(pool, lay, 2, ["web1", "web2"], lambda e: None, listed)
    assert removed == {"web1": ["v1"], "web2": ["v1"]}
    assert pool.commands("find ") == ["web2"]  # web1's listing came from its switch
    assert all("for t in v1;" in c for _, c in pool.log if "for t in " in c)


# -- the daemons --------------------------------------------------------------------------------


def test_stopping_goes_past_an_unreachable_host_and_names_it() -> None:
    s = plan_for().s

    def handler(host: str, command: str) -> Result:
        if host == "web2":
            raise OSError("No route to host")
        record = {"stopped": True, "pid": 9, "reason": "", "pid_file": f"/tmp/x/{host}.pid"}
        return ok({"stopped": [record], "clean": None})

    events: list[Event] = []
    pool = FakePool(handler)
    roles = {"seed1": ["tracker", "seed"], **{h: ["peer"] for h in PEERS}}
    result = daemons.stop_daemons(pool, s, roles, None, events.append)
    assert result.failed == {"web2": "cannot connect: No route to host"}
    assert sorted(result.succeeded) == ["seed1", "web1", "web3"]
    seed_command = next(c for h, c in pool.log if h == "seed1")
    assert "--role tracker --role seed" in seed_command and "--tag" not in seed_command
    by_host = {e.host: e for e in events}
    assert by_host["web2"].data["ok"] is False and by_host["web2"].message == "could not stop peer"
    assert by_host["web1"].message == "stopped web1.pid pid 9"


def test_murder_stop_stops_every_role_and_exits_non_zero_naming_the_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(host: str, command: str) -> Result:
        if host == "web1":
            raise OSError("timed out")
        return ok({"stopped": [], "clean": None})

    pool = FakePool(handler)
    monkeypatch.setattr(pipeline, "open_pool", lambda c, s: pool)
    c = Context()
    c.config.murder = {"tracker": "seed1", "seeder": "seed1", "peers": list(PEERS)}
    with pytest.raises(Exit) as caught:
        tasks_mod.stop(c)
    assert caught.value.code == 1 and "web1" in str(caught.value.message)
    assert sorted(pool.commands(" finish ")) == ["seed1", "web1", "web2", "web3"]
    assert "--role tracker --role seed" in next(c for h, c in pool.log if h == "seed1")


def test_a_peer_starts_with_its_slice_and_the_allow_list_built_once() -> None:
    plan = plan_for(destination_path="/srv/app")
    pool = FakePool(lambda host, command: ok({"pid": 50}))
    torrent = Path(__file__)  # any small file stands in for the torrent
    assert daemons.start_peer(pool, plan, pool.get("web2"), torrent, "f" * 64) == 50
    command = pool.log[-1][1]
    assert "--stripe 1/3" in command and "--seeder 10.0.0.1" in command
    # the list travels as a file on stdin (put), not on the command line
    assert "--allow-file ~/.cache/fabmurder/tmp/peer-v1.allow" in command
    assert "--allow " not in command and plan.allow_text is plan.allow_text
    assert plan.allow_text == "10.0.0.1/32\n10.0.0.2/31\n10.0.0.4/32\n"
    assert plan.allow_networks == ("10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/32")
    events: list[Event] = []
    running = FakePool(lambda host, command: ok({}, exited=3))
    assert daemons.start_seed(running, plan, events.append) is None
    assert events[-1].message == "already seeding"


# -- the verdict and a whole run -------------------------------------------------------------------


def test_the_verdict_allows_max_failed_peers_and_names_a_dead_seeder() -> None:
    from fabmurder import peers

    report = DeployReport("v1", hosts={h: HostReport(h, ok=h != "web1") for h in PEERS})
    report.hosts["web1"].reason = "timed out after 600 s (downloading, 1 of 9 bytes)"
    assert peers.judge(plan_for(max_failed_peers=1), report) is report
    with pytest.raises(DeployError) as caught:
        peers.judge(plan_for(), report, "the seeder's agent on seed1 (pid 7) died")
    assert str(caught.value) == (
        "1 of 3 peer(s) failed (max_failed_peers is 0); the seeder's agent on seed1 (pid 7) died"
    )
    assert caught.value.failures == report.failures and caught.value.report is report


def test_a_dead_seeder_is_named_in_each_timed_out_peer() -> None:
    plan = plan_for()
    report = DeployReport("v1", hosts={h: HostReport(h) for h in PEERS})
    report.hosts["web1"].reason = "timed out after 600 s (downloading, 1 of 9 bytes)"
    report.hosts["web2"].ok = True
    pool = FakePool(lambda host, command: ok({"alive": False, "pid": 77}))
    lost = distribution.seeder_loss(pool, plan, report)
    assert lost == "the seeder's agent on seed1 (pid 77) died during the transfer"
    assert report.hosts["web1"].reason.endswith(f"; {lost}")
    assert pool.commands("daemon status") == ["seed1"]


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    (tmp_path / "fabmurder-0-py3-none-any.whl").write_bytes(b"wheel")
    return tmp_path


def test_ctrl_c_during_the_watch_stops_every_agent_it_started_and_says_so(wheel_dir: Path) -> None:
    from fabmurder import install

    c = Context()
    c.config.murder = {
        "tracker": "seed1", "seeder": "seed1", "peers": list(PEERS), "tag": "v1",
        "files_path": "/srv/build", "destination_path": "/srv/app", "wheel_dir": str(wheel_dir),
    }  # fmt: skip
    s = settings(c)
    digest = install.wheel_set(s).digest
    info = {"info_hash": "ab" * 20, "sha256": "cd" * 32, "torrent": "/t/v1.torrent", "size": 9}

    def handler(host: str, command: str) -> Result:
        if command.startswith('printf "addr='):
            address = f"10.0.0.{len(host)}"
            return Result(stdout=f"addr=10.9.9.9 5 {address} 22\nstamp={digest}\n")
        if " token " in command:
            return ok({"file": "/t/tracker.token", "token": "tok", "new": False})
        if " create " in command:
            return ok(info)
        if " poll " in command or " stats " in command:
            raise KeyboardInterrupt  # the watch's first read, of a peer or of the feed
        if " finish " in command:
            return ok({"stopped": [], "clean": {}})
        return ok({"pid": 5})

    events: list[Event] = []
    pool = FakePool(handler)
    with pytest.raises(KeyboardInterrupt):
        distribution.distribute(pool, s, events.append)
    assert sorted(pool.commands(" finish ")) == ["seed1", *PEERS]
    assert pool.commands("--remove " + info["info_hash"]) == ["seed1"]
    warnings = [e.message for e in events if e.kind == "warning"]
    assert warnings == ["interrupted: stopping every agent this run started"]
    stops = [e for e in events if e.kind == "host" and "running" in e.message]
    assert stops and all(e.data["quiet"] is False for e in stops)


def test_one_pool_serves_a_whole_plan_and_the_plan_cannot_be_changed() -> None:
    pool = FakePool(lambda host, command: Result(stdout=f"addr=1 2 10.1.1.{len(host)} 22\n"))
    plan = make_plan(pool, plan_for().s, ["web1", "web2"])
    assert dict(plan.found.addresses) == {"web1": "10.1.1.4", "web2": "10.1.1.4"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.s = plan_for().s  # type: ignore[misc]
    assert ConnectionPool(Context().config).strict_host_keys is settings(Context()).strict_host_keys


# -- names --------------------------------------------------------------------------------------


def test_every_exported_name_is_its_object_after_any_import_order() -> None:
    for module in pkgutil.walk_packages(fabmurder.__path__, "fabmurder."):
        if not module.name.startswith("fabmurder.testing"):
            __import__(module.name)
    for name in fabmurder.__all__:
        value = getattr(fabmurder, name)
        assert not isinstance(value, types.ModuleType), name
        if name in fabmurder._LAZY:
            home = __import__(fabmurder._LAZY[name], fromlist=[name])
            assert value is getattr(home, name), name
    assert callable(fabmurder.status) and inspect.signature(fabmurder.status).parameters["c"]
    submodules = {m.name for m in pkgutil.iter_modules(fabmurder.__path__)}
    assert not submodules & set(fabmurder.__all__)


def test_the_options_name_every_config_key_and_nothing_else() -> None:
    from fabmurder.config import DEFAULTS

    assert set(Options.__annotations__) | {"tag"} >= set(DEFAULTS)
    assert set(Options.__optional_keys__) == set(DEFAULTS)


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    deadline = watch.time.monotonic() + 30
    while threading.active_count() > before + 1 and watch.time.monotonic() < deadline:
        watch.time.sleep(0.05)  # a hung poll's thread ends once its fake answers


def test_a_task_passes_on_only_the_flags_given_and_its_own_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []

    def fake(c: Any, sha256: Any = None, *, on_event: Any = None, **options: Any) -> DeployReport:
        seen.append((sha256, options))
        return DeployReport("v3")

    monkeypatch.setattr(pipeline, "peer_download", fake)
    tasks_mod.peer_download(Context(), tag="v3", sha256="ab" * 32, timeout="5")
    tasks_mod.peer_download(Context())
    assert seen == [("ab" * 32, {"tag": "v3", "timeout": "5"}), (None, {})]
    # (get_arguments() would consume the task's help, which other tests read)
    task = tasks_mod.peer_download
    assert list(task.argspec(task.body).parameters)[:3] == ["tag", "sha256", "destination_path"]
