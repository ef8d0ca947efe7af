"""The SSH backends side by side (``murder.ssh_backend``), as a section of docs/scale.md.

``python -m benchmarks.sshpage RUN.json ... --out docs/lab/ssh-backends.json``
gathers runs of ``python -m benchmarks.scale --backend ...`` (each its own
JSON) and, with ``--profile``, a cProfile of a deploy's every thread
(``bench.scale --profile``), into one lab file; then it renders
docs/scale.md again, whose last section :func:`section` draws from that
file (tests/test_docs_scale.py renders the page the same way).
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"
LAB = DOCS / "lab" / "ssh-backends.json"
PHASES = ("connect", "start", "watch", "finish", "publish")


def where(path: str) -> str:
    """Return the package a profiled function's file belongs to (C functions apart)."""
    if path == "~":
        return "built-in (C)"
    found = re.search(r"site-packages/([A-Za-z0-9_]+)", path)
    if found:
        return found.group(1)
    found = re.search(r"/(fabmurder|benchmarks)/", path)
    if found:
        return found.group(1)
    found = re.search(r"python3\.\d+/([A-Za-z0-9_]+)", path)
    return f"stdlib {found.group(1).removesuffix('.py')}" if found else path


def profile_summary(path: str, top: int = 12) -> dict[str, Any]:
    """Return the CPU by package (own time) and the top functions of a pstats file."""
    stats: Any = pstats.Stats(path)
    total = sum(v[2] for v in stats.stats.values())
    by: dict[str, float] = {}
    for (file, _, _), v in stats.stats.items():
        by[where(file)] = by.get(where(file), 0.0) + v[2]
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    return {
        "total_s": round(total, 2),
        "by_package": {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:top]},
        "top_functions": [
            [f"{where(f)}:{Path(f).name}:{line}({name})", v[1], round(v[2], 3)]
            for (f, line, name), v in ranked
        ],
    }


def _runs(lab: dict[str, Any], key: str = "results") -> list[dict[str, Any]]:
    out = []
    for result in lab.get(key, []):
        commit = re.findall(r"commit ([0-9a-f]{7,})", " ".join(result.get("notes", [])))
        for run in result["runs"]:
            backend = run.get("ssh_backend", result.get("ssh_backend"))
            out.append({**run, "ssh_backend": backend, "commit": commit[0] if commit else "?"})
    return out


def _goals(runs: list[dict[str, Any]], parallel: int) -> list[str]:
    lines = []
    for backend in dict.fromkeys(r["ssh_backend"] for r in runs):
        mine = [r for r in runs if r["ssh_backend"] == backend]
        threads = max(r["threads_max"] for r in mine)
        cheap = max(r["cpu_ms_per_host"] for r in mine)
        sim = {r["n"]: r["cpu_ms_per_host"] for r in mine if r["kind"] == "simulated"}
        flat = round(sim[1000] / sim[64], 2) if 64 in sim and 1000 in sim else None
        lines += [
            f"- `{backend}`: threads {threads} (goal <= parallel + 50 = {parallel + 50}: "
            f"{'met' if threads <= parallel + 50 else 'NOT met'}); control CPU up to "
            f"{cheap:.1f} ms per host (goal <= 10: {'met' if cheap <= 10 else 'NOT met'}); "
            f"N=1000 / N=64 = {flat} (goal <= 1.3: "
            f"{'not measured' if flat is None else 'met' if flat <= 1.3 else 'NOT met'})",
        ]
    return lines


def section(lab: dict[str, Any]) -> list[str]:
    """Return the lines of docs/scale.md's section on the SSH backends."""
    runs = _runs(lab)
    head = [
        "| backend | commit | fleet | N | ok | wall s | control CPU s | ms per host | threads max "
        "| fds max | RSS MiB | connect ms/host | one command ms/host | idle us/host/s "
        "| threads while open |",
        "|" + "---|" * 15,
    ]
    phases = ["| backend | commit | fleet | N | " + " | ".join(PHASES) + " |"]
    phases.append("|" + "---|" * (4 + len(PHASES)))
    for r in runs + _runs(lab, "history"):
        c = r.get("connection_costs") or {}
        kind = "SIMULATED" if r["kind"] == "simulated" else "real"
        head.append(
            f"| `{r['ssh_backend']}` | {r['commit']} | {kind} | {r['n']} | {r['ok']}/{r['n']} "
            f"| {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.2f} | {r['cpu_ms_per_host']:.1f} | {r['threads_max']} "
            f"| {r['fds_max']} | {r['rss_max_mib']:.0f} | {c.get('connect_ms_per_host', '-')} "
            f"| {c.get('command_ms_per_host', '-')} | {c.get('idle_us_per_host_per_s', '-')} "
            f"| {c.get('threads_while_open', '-')} |"
        )
        per = [r["phases"].get(p, {}).get("cpu_s") for p in PHASES]
        cells = " | ".join("-" if v is None else f"{1000 * v / r['n']:.1f}" for v in per)
        phases.append(f"| `{r['ssh_backend']}` | {r['commit']} | {kind} | {r['n']} | {cells} |")
    for x in [*lab["results"], *lab.get("history", [])]:
        for r in x.get("connections", []):
            c = r["connection_costs"]
            head.append(
                f"| `{r.get('ssh_backend', x.get('ssh_backend'))}` | see below "
                "| SIMULATED, connections only "
                f"| {c['hosts']} | {c['ok']}/{c['hosts']} | - | - | - | - | - | - "
                f"| {c['connect_ms_per_host']} | {c['command_ms_per_host']} "
                f"| {c['idle_us_per_host_per_s']} | {c['threads_while_open']} |"
            )
    runs_of = [
        f"- {'earlier, ' if x in lab.get('history', []) else ''}`{x['command']}`: "
        f"{x['started']} to {x.get('finished', '?')}, load average before {x['load_before']}, "
        f"after each run {[r['load_after'] for r in x['runs']] or '-'}"
        for x in [*lab["results"], *lab.get("history", [])]
    ]
    profile = lab.get("profile")
    prof = []
    if profile:
        prof = [
            f"cProfile of {profile['what']} (every thread; {profile['total_s']} s of own time",
            "under the profiler, which slows Python code more than C):",
            "",
            "| package | own CPU s |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in profile["by_package"].items()],
            "",
            "| function | calls | own CPU s |",
            "|---|---|---|",
            *[f"| `{f}` | {n} | {t} |" for f, n, t in profile["top_functions"]],
            "",
        ]
    return [
        "## The asyncssh backend",
        "",
        "`murder.ssh_backend: asyncssh` (`fabmurder/async_ssh.py`) carries every",
        "connection of a run on one asyncio event loop thread instead of one",
        "Paramiko transport thread per connection. These runs compare the two",
        "backends on the SIMULATED fleet and on 64 real hosts, with the same benchmark",
        f"(`python -m benchmarks.scale --backend ...`), at commit {lab['commit']}",
        f"({lab['how']}). The machine is shared: other engineers' benchmarks ran",
        "beside these, so wall times are loaded; CPU is the control process's own.",
        "",
        *runs_of,
        "",
        *head,
        "",
        "Control CPU per host by phase (ms):",
        "",
        *phases,
        "",
        "Against the issue's goals (the runs of the current commit; earlier runs are not judged):",
        "",
        *_goals(runs, lab["parallel"]),
        "",
        *prof,
        *[f"- {n}" for n in lab.get("notes", [])],
        "",
    ]


def page_section() -> list[str]:
    """Return the section from docs/lab/ssh-backends.json, or nothing when it is missing."""
    return section(json.loads(LAB.read_text())) if LAB.exists() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sshpage", description=__doc__)
    p.add_argument("runs", nargs="+", help="JSON files written by benchmarks.scale --out")
    p.add_argument("--commit", required=True, help="the commit the runs ran")
    p.add_argument("--how", default="", help="how the tree was run (a snapshot, its venv)")
    p.add_argument(
        "--history", action="append", default=[], help="an earlier run: in the tables, not judged"
    )
    p.add_argument("--profile", help="a pstats file from bench.scale --profile")
    p.add_argument("--profile-what", default="", help="what the profile is of")
    p.add_argument("--note", action="append", default=[], help="a line for the section")
    p.add_argument("--out", default=str(LAB))
    args = p.parse_args(argv)
    results = [json.loads(Path(path).read_text()) for path in args.runs]
    lab: dict[str, Any] = {
        "label": "the SSH backends on the SIMULATED fleet (docs/scale.md)",
        "commit": args.commit,
        "how": args.how,
        "parallel": results[0]["parallel"],
        "results": results,
        "history": [json.loads(Path(path).read_text()) for path in args.history],
        "notes": args.note,
    }
    if args.profile:
        lab["profile"] = {"what": args.profile_what, **profile_summary(args.profile)}
    Path(args.out).write_text(json.dumps(lab, indent=1) + "\n")
    from benchmarks import scalepage

    scale = json.loads((DOCS / "scale-results.json").read_text())
    (DOCS / "scale.md").write_text(scalepage.page(scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
