"""The docs build cleanly and agree with the code.

Sphinx runs with warnings as errors, as ``inv docs`` runs it (so an example
file a page includes, or a function it quotes, that went away fails here).
The configuration reference must list every key the code declares, with
its default, and the task reference every task, with the first line of its
docstring, which is what ``fab --list`` prints.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import fabmurder
from fabmurder.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ROW = re.compile(r"^\| `([a-z_]+)` \| ([^|]*) \|", re.M)


def test_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-q",
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "quickstart.html").is_file()


def shown(value: Any) -> str:
    """Return a default as the configuration reference writes it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | dict):
        return f"`{value}`"
    return str(value)


def test_the_config_reference_lists_every_key_with_its_default() -> None:
    rows = dict(ROW.findall((DOCS / "config.md").read_text()))
    declared = DEFAULTS
    assert sorted(set(declared) - set(rows)) == [], "undocumented keys"
    assert sorted(set(rows) - set(declared)) == [], "documented keys the code does not have"
    wrong = {
        k: (rows[k].strip(), shown(v)) for k, v in declared.items() if rows[k].strip() != shown(v)
    }
    assert wrong == {}, "documented default (left) differs from the code's (right)"


def summary(task: Any) -> str:
    return str(task.__doc__).strip().splitlines()[0]


def test_the_task_reference_shows_each_task_with_its_fab_list_line() -> None:
    page = (DOCS / "tasks.md").read_text()
    for name in fabmurder.ns.task_names:
        task = fabmurder.ns[name]
        assert f"### `murder.{name}`\n\n> {summary(task)}\n" in page, name
    documented = set(re.findall(r"^### `murder\.([a-z-]+)`", page, re.M))
    assert documented == set(fabmurder.ns.task_names)


def test_fab_list_prints_the_first_docstring_line_of_each_task() -> None:
    fab = Path(sys.executable).with_name("fab")
    out = subprocess.run(
        [str(fab), "--list", "--list-format", "json"],
        cwd=ROOT / "examples",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # the example fabfile's one subcollection is murder (Invoke lists it without its key)
    (murder,) = json.loads(out.stdout)["collections"]
    listed = {t["name"]: t["help"] for t in murder["tasks"]}
    assert listed == {name: summary(fabmurder.ns[name]) for name in fabmurder.ns.task_names}
