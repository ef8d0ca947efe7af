"""What the scaling benchmark shows on ``docs/performance.md``: its figures, from the JSON.

Every figure on the page lives in a generated block between
``<!-- bench:begin NAME -->`` and ``<!-- bench:end NAME -->``, rendered here
from the results JSON alone (``python -m benchmarks.scaling --resummarise``
rewrites them; ``tests/test_docs_performance.py`` checks that the page and the
JSON agree). An extrapolated central push is marked as such wherever it
appears, and a goal that was not judged says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from benchmarks import model
from benchmarks.summary import WINDOWS, spread

BLOCK = re.compile(r"(<!-- bench:begin (\w+) -->\n)(.*?)(<!-- bench:end \2 -->)", re.S)
MIB = 1024 * 1024
MBIT = 1e6 / 8

#: the phases of a small deploy, in order, with what each one covers
PHASES = {
    "ssh_connect": "connect to every host (strict host keys); one probe: address, agent stamp, "
    "destination",
    "agent_check": "the probe's stamp says up to date: no command of its own",
    "tar_and_hash": "`create` on the seeder, the tracker registration",
    "tracker_start": "`daemon start tracker` (already running: exits at once)",
    "peer_agent_start": "one command per peer: directories, the torrent, `daemon start peer`",
    "seeder_start": "`daemon start seed`: data check, listen, ready",
    "transfer": "start of seeding to the last peer's verified pieces",
    "verify_and_extract": "SHA-256 and atomic extraction on the last peer",
    "wait_for_last_poll": "the control side sees the last `installed` status",
    "stop_and_clean": "one `finish` per host beside the deregistration",
}


def seconds(x: float | None, digits: int = 2) -> str:
    """Return ``x`` seconds as the page writes them."""
    return "—" if x is None else f"{x:.{digits}f} s"


def ranged(sp: dict[str, Any], unit: str = " s", digits: int = 2) -> str:
    """Return a spread as "median unit (min-max)", or the one value of a single run."""
    med = f"{sp['median']:.{digits}f}{unit}"
    if sp["runs"] == 1:
        return med
    return f"{med} ({sp['min']:.{digits}f}-{sp['max']:.{digits}f})"


def hours(x: float) -> str:
    """Return a long time in seconds, and in hours once it is more than one."""
    return f"{x:,.0f} s ({x / 3600:.1f} h)" if x > 3600 else f"{x:,.0f} s"


def kib(n: int) -> str:
    """Return a piece size in KiB."""
    return f"{n // 1024} KiB"


def central(row: dict[str, Any]) -> str:
    """Return a row's central push, marked measured or extrapolated."""
    c = row["central_s"]
    if row["central_basis"] == "measured":
        return f"{ranged(c)}, measured"
    if row["central_basis"] == "extrapolated":
        return f"*{seconds(c['extrapolated'], 1)}, extrapolated*"
    return "not measured"


def speedup(row: dict[str, Any], window: str) -> str:
    """Return a row's speed-up on one window, marked when the push was extrapolated."""
    x = row["speedup"][window]
    if x is None:
        return "—"
    return f"*{x:.1f}×, extrapolated*" if row["central_basis"] == "extrapolated" else f"{x:.1f}×"


def table(head: list[str], rows: list[list[str]]) -> str:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_block(results: dict[str, Any]) -> str:
    """Return the sentence that says which run the page shows."""
    m = results["machine"]
    lt = f", libtorrent {m['libtorrent']}" if m.get("libtorrent") else ""
    label = f" ({results['label']})" if results.get("label") else ""
    pushes = f"the central push {len(results['central'])} time(s) in all"
    loads = [x for r in all_runs(results) for x in (r["load_before"][0], r["load_after"][0])]
    load = f"; the 1-minute load average was {min(loads):g}-{max(loads):g}" if loads else ""
    reads = [r["bench_read_s"] for r in results["swarm"] if "bench_read_s" in r]
    if reads:
        load += (
            f"; the benchmark's own read of the seeder's status, inside each whole run, "
            f"took {min(reads):.3f}-{max(reads):.3f} s"
        )
    return (
        f"`docs/perf-results.json` holds the run shown here{label}: started {results['date']}, "
        f"{results['bench_seconds']:.0f} s in all, {results['size_mib']} MiB at "
        f"{results['rate_mbit']:g} Mbit/s per host, on {m['cpus']} CPUs{lt}; the swarm ran "
        f"{runs_per_n(results)} per N, {pushes}{load}.\n"
    )


def all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every measured run: swarm, central push and overhead."""
    return [
        *results["swarm"],
        *results["central"],
        *(results.get("overhead_runs") or []),
    ]


def runs_per_n(results: dict[str, Any]) -> str:
    """Return how many runs each N had, as a phrase."""
    runs = sorted({r["runs"] for r in results["summary"]["rows"]})
    text = "-".join(str(x) for x in runs)
    return f"{text} time" if runs == [1] else f"{text} times"


def b_block(results: dict[str, Any]) -> str:
    """Return the paragraph that derives B and S/B, and the push's measured rate."""
    s = results["summary"]
    size, b = s["size"], s["b_effective"]
    eff = b / s["b_nominal"]
    text = (
        f"`B = {eff:.3f} × {results['rate_mbit']:g} Mbit/s = {b / 1e6:.3f} MB/s` and, for the "
        f"{results['size_mib']} MiB payload (its release tarball is {size:,} bytes), "
        f"**S/B = {size / b:.2f} s**."
    )
    if s["b_measured_central"]:
        recorded = sorted({c["bytes"] for c in results["central"] if "bytes" in c})
        tarball = (
            f"its tarball is {', '.join(f'{x:,}' for x in recorded)} bytes"
            if recorded
            else "its tarball's size was not recorded, so the release's size stands in"
        )
        at = ", ".join(f"N = {n}" for n in s["central_measured_at"])
        text += (
            f" The central push (measured at {at}; {tarball}) ran at up to "
            f"{s['b_measured_central'] / 1e6:.3f} MB/s"
            f" ({(s['b_measured_central'] / b - 1) * 100:+.1f} % against B), the rate the "
            f"extrapolated pushes use."
        )
    else:
        text += " No central push was measured, so no central figure is shown or judged."
    return text + "\n"


def results_block(results: dict[str, Any]) -> str:
    """Return the table of every N: the three swarm windows, the push and the speed-ups."""
    head = [
        "peers N",
        "piece size",
        "transfer",
        "/ (S/B)",
        "to last install",
        "whole run",
        "seeder sent",
        "central push (scp)",
        "speed-up, whole run",
        "to last install",
        "transfer",
    ]
    rows = [
        [
            str(r["n"]),
            kib(r["piece_size"]),
            ranged(r["transfer_s"]),
            f"{r['over_ideal']:.2f}",
            ranged(r["installed_s"]),
            ranged(r["wall_s"]),
            ranged(r["seeder_upload_over_s"], " × S"),
            central(r),
            speedup(r, "whole_run"),
            speedup(r, "to_last_install"),
            speedup(r, "transfer"),
        ]
        for r in results["summary"]["rows"]
    ]
    return table(head, rows)


def verdict(goal: dict[str, Any]) -> str:
    """Return a goal's verdict: yes, no, or not judged and why."""
    if goal["met"] is None:
        return f"not judged: {goal['reason']}"
    return "yes" if goal["met"] else "**no**"


def goals_block(results: dict[str, Any]) -> str:
    """Return the goals table, each with its figure, what it is judged on and its verdict."""
    g = results["summary"]["goals"]
    rows = []
    if "near_limit" in g:
        x = g["near_limit"]
        per_n = ", ".join(f"{r['over_ideal']:.2f}" for r in results["summary"]["rows"])
        ns = ", ".join(str(r["n"]) for r in results["summary"]["rows"])
        rows.append(
            [f"near the limit, N = {ns}", f"≤ {x['target']} × S/B", per_n, x["judged_on"]]
            + [verdict(x)]
        )
    if "flat" in g:
        x = g["flat"]
        rows.append(
            ["flat", f"T(16) / T(2) ≤ {x['target']}", f"{x['t16_over_t2']:.3f}", x["judged_on"]]
            + [verdict(x)]
        )
    if "vs_central" in g:
        x = g["vs_central"]
        figure = "—" if x["speedup_whole_run"] is None else f"{x['speedup_whole_run']:.1f}×"
        narrow = [
            f"{name} {x[key]:.1f}×"
            for name, key in (
                ("to the last install", "speedup_to_last_install"),
                ("transfer", "speedup_transfer"),
            )
            if x[key] is not None
        ]
        if narrow:
            figure += f" (narrower windows, not judged: {', '.join(narrow)})"
        rows.append(
            [
                "ahead of the central push, N = 16",
                f"≥ {x['target']:g}×, whole run",
                figure,
                f"central push {x['central_basis']}; {x['judged_on']}",
                verdict(x),
            ]
        )
    if "seeder_upload" in g:
        x = g["seeder_upload"]
        rows.append(
            [
                "the seeder is not the hose, N = 16",
                f"≤ {x['target']} × S",
                f"{x['over_s']:.2f} × S (seeder's count {ranged(x['seeder_count'], '')}, "
                f"peers' count {ranged(x['peers_count'], '')})",
                x["judged_on"],
                verdict(x),
            ]
        )
    if "overhead" in g:
        x = g["overhead"]
        rows.append(
            [
                "fixed overhead, 1 MiB, no cap",
                f"wall ≤ transfer + {x['target']:g} s",
                f"{ranged(x['wall_minus_transfer_s'])} over the transfer",
                x["judged_on"],
                verdict(x),
            ]
        )
    if "peer_cpu_s_per_mib" in g:
        x = g["peer_cpu_s_per_mib"]
        rows.append(
            [
                "CPU per MiB on a peer",
                "report",
                ranged(x, " CPU-s/MiB", 4),
                "every swarm run",
                "-",
            ]
        )
    if "agent_loop_share" in g:
        x = g["agent_loop_share"]
        rows.append(
            [
                "agent's Python loop",
                f"< {x['target'] * 100:g} % of a core per host",
                f"{x['max_share_of_core'] * 100:.2f} %",
                x["judged_on"],
                verdict(x),
            ]
        )
    return table(["goal", "target", "measured", "judged on", "met?"], rows)


def overhead_block(results: dict[str, Any]) -> str:
    """Return the phases of the small uncapped runs: median and range of each."""
    runs = results.get("overhead_runs") or []
    if not runs:
        return "No overhead runs in this JSON (`--no-overhead`).\n"
    rows = []
    for key, what in PHASES.items():
        values = [r["phases"][key] for r in runs if key in r["phases"]]
        if values:
            rows.append([key.replace("_", " "), ranged(spread(values)), what])
    extra = results["summary"]["goals"]["overhead"]["wall_minus_transfer_s"]
    rows.append(["**more than the transfer**", f"**{ranged(extra)}**", "the goal's figure"])
    size = runs[0]["size"]
    head = f"{len(runs)} run(s) of {size:,} bytes to {runs[0]['n']} peers, no cap:\n\n"
    return head + table(["phase", "seconds: median (min-max)", "what"], rows)


def model_block(results: dict[str, Any]) -> str:
    """Return the paper model at N = 16, 1,000 and 10,000."""
    rows = [
        [
            f"{m['n']:,}",
            hours(m["central_s"]),
            f"{m['swarm_s_r1']:.1f} s",
            f"{m['swarm_s_r']:.1f} s",
            f"{m['control_start_s']:g} s / {m['control_start_s_parallel_256']:g} s",
            kib(m["piece_size"]),
        ]
        for m in results["summary"]["model"]
    ]
    r = results["summary"]["model"][0]["redundancy"]
    head = [
        "N",
        "central push",
        "swarm, r = 1",
        f"swarm, r = {r}",
        "control side starts the peers (parallel 32 / 256)",
        "piece size",
    ]
    return table(head, rows)


def check_block(results: dict[str, Any]) -> str:
    """Return the model against the fleet: each N's transfer and push, modelled and measured."""
    s = results["summary"]
    size, b = s["size"], s["b_effective"]
    rows = []
    for r in s["rows"]:
        red = r["seeder_upload_over_s"]["median"]
        with_r = model.swarm_time(r["n"], size, b, r["piece_size"], red)
        measured = r["transfer_s"]["median"]
        push = r["central_s"]["median"] if r["central_basis"] == "measured" else None
        rows.append(
            [
                str(r["n"]),
                f"{red:.2f}",
                seconds(r["model_swarm_s"]),
                seconds(with_r),
                seconds(measured),
                f"{(with_r / measured - 1) * 100:+.1f} %",
                seconds(r["model_central_s"], 1),
                seconds(push, 1) if push else "not measured",
            ]
        )
    head = [
        "N",
        "r measured (median)",
        "model, r = 1",
        "model, measured r",
        "transfer measured (median)",
        "model against measured",
        "central push, model",
        "central push, measured",
    ]
    return table(head, rows)


def windows_block(results: dict[str, Any]) -> str:
    """Return the list of timed windows as the JSON defines them."""
    windows = results["summary"].get("windows", WINDOWS)
    return "".join(f"- `{key}`: {text}.\n" for key, text in windows.items())


BLOCKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "run": run_block,
    "windows": windows_block,
    "b": b_block,
    "results": results_block,
    "goals": goals_block,
    "overhead": overhead_block,
    "model": model_block,
    "check": check_block,
}


def rewrite(text: str, results: dict[str, Any]) -> str:
    """Return ``text`` with every generated block rendered afresh from ``results``."""

    def render(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise KeyError(f"unknown bench block {name!r}")
        return m.group(1) + BLOCKS[name](results) + m.group(4)

    return BLOCK.sub(render, text)


def tables(results: dict[str, Any]) -> str:
    """Return the figures as the console shows them after a run."""
    return "\n".join(BLOCKS[name](results) for name in ("b", "results", "goals"))
