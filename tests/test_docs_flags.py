"""Every ``fab`` command the docs show uses flags that ``fab --help`` lists, for that task.

The commands come from the docs' shell blocks and inline code (`` `fab ...` ``).
Core flags (before the first task) are checked against ``fab --help``, a
task's flags against ``fab --help TASK``, both run in ``examples/`` as a
user would; a value-taking flag consumes the next word. No task of
fabmurder's, or of the example, has a short flag: each letter of ``fab``'s
own core flags keeps its one meaning.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import fabmurder

ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))
FLAG = re.compile(r"(?:^|, )(-{1,2}[a-zA-Z][\w-]*)(\[?=[A-Z]+\]?| [A-Z]+|)")


def fab_help(*task: str) -> str:
    out = subprocess.run(
        [FAB, "--help", *task], cwd=ROOT / "examples", capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@functools.cache
def flags(task: str | None) -> dict[str, bool]:
    """Return flag -> whether it takes a value, for ``task`` (None: the core flags)."""
    found: dict[str, bool] = {}
    for line in fab_help(*([task] if task else [])).splitlines():
        words = line.strip().split("  ")[0]
        if not words.startswith("-"):
            continue
        for name, value in FLAG.findall(words):
            found[name] = bool(value) and not value.startswith("[")
    return found


@functools.cache
def task_names() -> set[str]:
    out = subprocess.run(
        [FAB, "--list", "--list-format", "flat"],
        cwd=ROOT / "examples", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return {line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()}


def commands() -> list[tuple[str, str]]:
    """Return (page, command) for each ``fab`` command in a shell block or inline code."""
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        lines, fence = [], None
        for line in text.splitlines():
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
            elif fence in ("", "sh", "shell", "bash", "console"):
                lines.append(line)
        lines += re.findall(r"`([^`\n]*\bfab [^`\n]*)`", text)
        for line in lines:
            line = line.strip().removeprefix("$ ")
            if "fab " in line and not line.startswith("#"):
                found.append((page.name, line[line.index("fab ") :]))
    return found


def problems(command: str) -> list[str]:
    words = shlex.split(command)[1:]
    wrong = []
    task: str | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("...", "&&", "|") or "<" in word:
            break
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            known = flags(task)
            if name not in known:
                wrong.append(f"{name} is not a flag of {task or 'fab'}")
            elif known[name] and "=" not in word:
                i += 1
        elif word in task_names():
            task = word
        else:
            wrong.append(f"{word!r} is not a task")
        i += 1
    return wrong


def test_every_fab_command_in_the_docs_uses_flags_that_fab_help_lists() -> None:
    shown = commands()
    assert len(shown) > 20
    found = {f"{page}: {command}": problems(command) for page, command in shown}
    assert {k: v for k, v in found.items() if v} == {}


def test_no_task_has_a_short_flag() -> None:
    for name in [f"murder.{t}" for t in fabmurder.ns.task_names] + ["deploy", "canary"]:
        short = [f for f in flags(name) if not f.startswith("--")]
        assert short == [], name


def test_the_check_catches_a_flag_the_task_does_not_have() -> None:
    # the trap #13 found in the integration guide: the example's deploy has no such flag
    assert problems("fab -f deploy/production.yaml deploy --max-failed-peers 2") == [
        "--max-failed-peers is not a flag of deploy",
        "'2' is not a task",
    ]
    assert problems("fab -f x.yaml murder.deploy --tag v1 --peers a,b murder.status") == []
