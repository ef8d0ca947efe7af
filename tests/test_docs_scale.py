"""docs/scale.md is the page the scale benchmark wrote from docs/scale-results.json, unedited."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import scalepage

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_scale_page_is_the_results_json_rendered() -> None:
    results = json.loads((DOCS / "scale-results.json").read_text())
    assert (DOCS / "scale.md").read_text() == scalepage.page(results), (
        "docs/scale.md differs from what benchmarks.scalepage renders from "
        "docs/scale-results.json: rerun inv bench.scale rather than editing the page"
    )


def test_the_verdicts_on_the_page_are_the_ones_the_code_gives_the_runs() -> None:
    results = json.loads((DOCS / "scale-results.json").read_text())
    assert results["goals"] == scalepage.goals(results["runs"], results["parallel"])
    assert all(r["kind"] in ("real", "simulated") for r in results["runs"])
    assert "SIMULATED" in (DOCS / "scale.md").read_text()
