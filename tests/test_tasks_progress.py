"""The task layer's drawing: no bar off a terminal, [host] error lines, the final table."""

from __future__ import annotations

import io

from fabmurder.progress import Renderer, human_bytes, table
from fabmurder.report import DeployReport, Event, HostReport


def test_no_bar_is_drawn_when_stdout_is_not_a_terminal_and_errors_name_the_host() -> None:
    out, err = io.StringIO(), io.StringIO()
    render = Renderer(out=out, err=err)
    render(Event("phase", "seeding"))
    for done in range(3):
        data = {"done": done, "failed": 0, "total": 2, "bytes": done * 10, "bytes_total": 20}
        render(Event("progress", data=data))
    render(Event("host", "failed", "web2", {"ok": False, "reason": "timed out after 60 s"}))
    render.close()
    assert out.getvalue() == "murder: seeding\n"
    assert err.getvalue() == "[web2] timed out after 60 s\n"


def test_the_table_shows_time_bytes_and_where_they_came_from_per_host() -> None:
    report = DeployReport(tag="v7", size=3 * 2**20, seconds=4.25)
    report.hosts = {
        "web1": HostReport("web1", ok=True, seconds=1.5, bytes=3 * 2**20,
                           from_seeder=2**20, from_peers=2 * 2**20),
        "web2": HostReport("web2", reason="cannot connect: Connection refused"),
    }  # fmt: skip
    lines = table(report).splitlines()
    assert lines[0].split() == ["host", "result", "time", "bytes", "from", "seeder", "from",
                                "peers", "reason"]  # fmt: skip
    assert lines[1].split() == ["web1", "ok", "1.5", "s", "3.0", "MiB", "1.0", "MiB", "2.0", "MiB"]
    assert lines[2].startswith("web2") and lines[2].endswith("cannot connect: Connection refused")
    assert lines[3] == "release v7: 1 of 2 peer(s) ok, 3.0 MiB in 4.2 s"


def test_byte_counts_read_as_people_write_them() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 2**30)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 GiB",
    ]  # fmt: skip


def test_routine_per_host_news_stays_out_of_the_output_but_failures_never_do() -> None:
    out, err = io.StringIO(), io.StringIO()
    render = Renderer(out=out, err=err)
    render(Event("host", "agent up to date", "web1", {"ok": True, "quiet": True}))
    render(Event("host", "tracker started (pid 9)", "build", {"ok": True}))
    render(Event("host", "failed", "web2", {"ok": False, "reason": "disk full", "quiet": True}))
    assert out.getvalue() == "[build] tracker started (pid 9)\n"
    assert err.getvalue() == "[web2] disk full\n"
