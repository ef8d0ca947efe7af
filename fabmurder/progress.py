"""Draw a run for people: one aggregate progress bar, error lines, a final table.

:class:`Renderer` is the ``on_event`` callback the task layer hands to the
function layer. The bar is tqdm's, with ``disable=None`` so nothing is
drawn when stdout is not a terminal (CI logs get the phase lines and the
table only).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

from fabmurder.report import DeployReport, Event, HostReport


def human_bytes(n: float) -> str:
    """Return ``n`` bytes as a short human string (``1.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


class Renderer:
    """Turn pipeline events into a progress bar and ``[host]`` lines."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar: tqdm[Any] | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "progress":
            self._progress(event.data)
        elif event.kind == "phase":
            self._line(f"murder: {event.message}", self.out)
        elif event.kind == "warning":
            self._line(f"murder: warning: {event.message}", self.err)
        elif event.kind == "host":
            if event.data.get("ok") is False:
                reason = event.data.get("reason") or event.message
                self._line(f"[{event.host}] {reason}", self.err)
            elif not event.data.get("quiet") and event.message != "installed":
                self._line(f"[{event.host}] {event.message}", self.out)

    def _line(self, text: str, stream: IO[str]) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def _progress(self, data: Any) -> None:
        total = int(data.get("bytes_total") or 0)
        if self.bar is None:
            size = shutil.get_terminal_size()
            self.bar = tqdm(
                total=total or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None,
                file=self.out,
                leave=True,
                # a terminal that reports no size (0x0) would hide the bar
                ncols=size.columns,
                nrows=size.lines,
            )
        done, failed, peers = data.get("done", 0), data.get("failed", 0), data.get("total", 0)
        desc = f"{done}/{peers} peers" + (f", {failed} failed" if failed else "")
        self.bar.set_description_str(desc, refresh=False)
        swarm = data.get("swarm") or {}
        if swarm:
            self.bar.set_postfix_str(
                f"seeders {swarm.get('seeders', '?')} leechers {swarm.get('leechers', '?')}",
                refresh=False,
            )
        self.bar.update(max(0, int(data.get("bytes") or 0) - self.bar.n))

    def close(self) -> None:
        """Finish the bar, if one was drawn."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def table(report: DeployReport) -> str:
    """Return the final per-host table of a run."""
    rows = [("host", "result", "time", "bytes", "from seeder", "from peers", "reason")]
    hosts: Iterable[HostReport] = report.hosts.values()
    for r in hosts:
        rows.append(
            (
                r.host,
                "ok" if r.ok else "FAILED",
                f"{r.seconds:.1f} s" if r.seconds is not None else "-",
                human_bytes(r.bytes),
                human_bytes(r.from_seeder),
                human_bytes(r.from_peers),
                r.reason or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)).rstrip()
        + (f"  {row[6]}" if row[6] else "")
        for row in rows
    ]
    ok = len(report.succeeded)
    lines.append(
        f"release {report.tag}: {ok} of {len(report.hosts)} peer(s) ok, "
        f"{human_bytes(report.size)} in {report.seconds:.1f} s"
    )
    return "\n".join(lines)
