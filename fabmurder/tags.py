"""Release tags: what a release may be called.

A tag becomes a directory name on every peer (``destination_path/<tag>``)
and part of file names under ``temp_path``, so it is checked on the control
machine before anything runs and again on each host. Imported on both
sides: no Fabric here.
"""

from __future__ import annotations

import re

from fabmurder.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime

#: letters, digits, dot, dash, underscore, plus; must start with a letter or digit
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def validate_tag(tag: object) -> str:
    """Return ``tag`` unchanged if it is a safe release name, else raise.

    :raises ConfigError: naming what is wrong with the tag (a ``/``, ``..``,
        whitespace, a shell metacharacter, empty, too long).
    """
    if not isinstance(tag, str) or not tag:
        raise ConfigError("the release tag is empty", key="tag")
    problem = None
    if "/" in tag:
        problem = "contains '/'"
    elif ".." in tag:
        problem = "contains '..'"
    elif any(ch.isspace() for ch in tag):
        problem = "contains whitespace"
    elif len(tag) > 128:
        problem = "is longer than 128 characters"
    elif not TAG_PATTERN.fullmatch(tag):
        bad = sorted({ch for ch in tag if not re.fullmatch(r"[A-Za-z0-9._+-]", ch)})
        problem = (
            f"contains shell metacharacters or other unsafe characters: {''.join(bad)!r}"
            if bad
            else "must start with a letter or digit"
        )
    if problem:
        raise ConfigError(
            f"invalid release tag {tag!r}: it {problem}; "
            "use letters, digits, '.', '-', '_' and '+' only",
            key="tag",
        )
    return tag


def default_tag(now: datetime | None = None) -> str:
    """Return a UTC timestamp tag such as ``20261126T141200Z``."""
    # Imported here: the host side validates tags at every start and needs no clock.
    from datetime import UTC, datetime

    moment = now or datetime.now(UTC)
    return moment.strftime("%Y%m%dT%H%M%SZ")
