"""Tokens in tracker URLs never reach what fabmurder prints."""

from __future__ import annotations

import pytest

from fabmurder.redact import HIDDEN, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'tracker: "http://10.0.0.1:6969/announce/9f8e7d" (404) not found',
            f'tracker: "http://10.0.0.1:6969/announce/{HIDDEN}" (404) not found',
        ),
        (
            "GET http://t:1/stats/abc123 failed; then /scrape/x-y_z?info_hash=%ab",
            f"GET http://t:1/stats/{HIDDEN} failed; then /scrape/{HIDDEN}?info_hash=%ab",
        ),
        ("http://t/metrics/s3cret", f"http://t/metrics/{HIDDEN}"),
        # Paths without a token stay as they are.
        ("http://t/announce?info_hash=1", "http://t/announce?info_hash=1"),
        ("/srv/releases/announce-notes.txt", "/srv/releases/announce-notes.txt"),
    ],
)
def test_redact_hides_the_token_of_every_tracker_path(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "9f8e7d" not in redact(text) and "s3cret" not in redact(text)
