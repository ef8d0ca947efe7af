"""Keep tokens out of what fabmurder prints: logs, errors and reports.

A tracker URL carries a secret path element (``/announce/<deploy token>``,
``/report/<deploy token>``, ``/stats/<tracker token>``,
``/progress/<tracker token>``). Anything that may echo such a URL, such as
a libtorrent tracker alert, a failed stats poll or a host command's error,
goes through :func:`redact` first. Both sides import it; it imports nothing of Fabric.
"""

from __future__ import annotations

import re

_TOKEN_PATH = re.compile(r"/(announce|scrape|stats|metrics|progress|report)/[^\s/?#\"']+")

#: what stands in for a token
HIDDEN = "<token>"


def redact(text: str) -> str:
    """Return ``text`` with every tracker URL token replaced by :data:`HIDDEN`."""
    return _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/{HIDDEN}", text)
