"""docs/performance.md quotes only what docs/perf-results.json holds.

The page's figures live in generated blocks that ``python -m
benchmarks.scaling --resummarise`` renders from the JSON; here the blocks are
rendered again and compared, the JSON's verdict is recomputed from its raw
runs, and the prose outside the blocks is searched for figures of its own.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import model, page, summary  # noqa: E402

PAGE = ROOT / "docs" / "performance.md"
RESULTS = ROOT / "docs" / "perf-results.json"
#: a figure: a decimal (23.0, 5.84) or a number with thousands separators (67,119,104)
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])|(?<![\w,])\d{1,3}(?:,\d{3})+(?![\w,])")


def results() -> dict[str, Any]:
    return dict(json.loads(RESULTS.read_text()))


def test_every_generated_block_on_the_page_is_the_json_rendered() -> None:
    text = PAGE.read_text()
    names = [m.group(2) for m in page.BLOCK.finditer(text)]
    assert sorted(names) == sorted(page.BLOCKS), "a block is missing or appears twice"
    assert page.rewrite(text, results()) == text, (
        "docs/performance.md is stale: run python -m benchmarks.scaling --resummarise"
    )


def test_a_changed_figure_in_the_json_shows_as_a_stale_page() -> None:
    text, data = PAGE.read_text(), results()
    data["summary"]["rows"][-1]["transfer_s"]["median"] += 1.0
    assert page.rewrite(text, data) != text


def test_the_jsons_summary_is_the_verdict_the_code_gives_its_raw_runs() -> None:
    data = results()
    size = data["swarm"][0]["size"]
    fresh = json.loads(json.dumps(summary.summarise(data, size)))
    assert fresh == data["summary"]


def constants() -> dict[str, float]:
    """Return the figures the prose may quote, each from the code that defines it."""
    data = results()
    return {
        "0.956": summary.TC_PAYLOAD_EFFICIENCY,
        "95.6": round(summary.TC_PAYLOAD_EFFICIENCY * 100, 1),
        "0.3": model.T_CONNECT,
        "1.2": model.T_START,
        **{f"{m['n']:,}": m["n"] for m in data["summary"]["model"]},
        # arithmetic on the constants above: 1,024 pieces of 64 KiB in 64 MiB,
        # 4,096 of 16 KiB; one announce per 10 s from 10,000 peers
        "1,024": 64 * 1024 // 64,
        "4,096": 64 * 1024 // 16,
    }


def test_the_prose_outside_the_blocks_quotes_no_figure_of_its_own() -> None:
    outside = page.BLOCK.sub("", PAGE.read_text())
    allowed = constants()
    stray = [m.group(0) for m in FIGURE.finditer(outside) if m.group(0) not in allowed]
    assert stray == [], f"figures in docs/performance.md that no JSON or constant gives: {stray}"
    # each allowed figure is what its source says today, so a changed constant fails here
    for text, value in allowed.items():
        assert float(text.replace(",", "")) == value, text


def test_the_figure_search_finds_what_the_issue_named() -> None:
    found = FIGURE.findall("2 S / 23.0 s = 5.84 MB/s, a tarball of 67,119,104 bytes; 16 peers")
    assert found == ["23.0", "5.84", "67,119,104"]
