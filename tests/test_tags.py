"""Release tags: the one rule both sides import (fabmurder.tags)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fabmurder.errors import ConfigError
from fabmurder.tags import default_tag, validate_tag
from fabmurder.testing.hostcli import run as fab


@pytest.mark.parametrize(
    ("tag", "problem"),
    [
        ("", "is empty"),
        (None, "is empty"),
        ("-v1", "must start with a letter or digit"),
        ("--force", "must start with a letter or digit"),
        (".v1", "must start with a letter or digit"),
        (".", "must start with a letter or digit"),
        (".hidden", "must start with a letter or digit"),
        ("_v1", "must start with a letter or digit"),
        ("+v1", "must start with a letter or digit"),
        ("v" * 129, "is longer than 128 characters"),
        ("-" + "v" * 200, "is longer than 128 characters"),
    ],
    ids=lambda value: repr(value)[:20],
)
def test_a_leading_dash_or_dot_an_empty_or_an_over_long_tag_is_refused(
    tag: object, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        validate_tag(tag)
    assert caught.value.key == "tag"


@pytest.mark.parametrize(
    "tag", ["v" * 128, "1", "v1.2.3-rc1+build_7", "Release.2026-12", "20261126T141200Z"]
)
def test_names_of_letters_digits_and_dot_dash_underscore_plus_are_kept_as_they_are(
    tag: str,
) -> None:
    assert validate_tag(tag) is tag


def test_the_default_tag_is_a_valid_tag_naming_the_moment_given() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert validate_tag(default_tag(moment)) == "20260102T030405Z"


@pytest.mark.parametrize("tag", ["-v1", ".v1", "v" * 129])
def test_the_host_side_refuses_the_same_tags(tmp_path: Path, tag: str) -> None:
    # `--tag=...`: a tag that starts with a dash must still reach the rule as a value.
    result = fab("clean", "--temp-path", str(tmp_path), f"--tag={tag}")
    assert result.returncode == 2, result.stdout
    assert "invalid release tag" in result.stderr and "Traceback" not in result.stderr
