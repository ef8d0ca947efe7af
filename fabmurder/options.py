"""The function layer's options: every ``murder`` key as a typed keyword argument.

:class:`Options` is what the public functions take after their own
parameters (``**options: Unpack[Options]``), so a misspelt option fails
under mypy and in an IDE, not only when the run resolves its settings. A
value of ``None`` means "not given": the config's value applies. Numbers
may come as strings, as a task flag gives them; :func:`fabmurder.config.settings`
checks and converts every value once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

Number = int | float | str


class UntaggedOptions(TypedDict, total=False):
    """Every option but ``tag``, for functions that take the tag as a parameter of their own."""

    tracker: str | None
    seeder: str | None
    peers: str | Sequence[str] | None
    tracker_port: int | str | None
    peer_port: int | str | None
    setup_port: int | str | None
    tracker_url: str | None
    tracker_token: str | None
    tracker_register: str | None
    remote_path: str | None
    temp_path: str | None
    files_path: str | None
    local_path: str | None
    destination_path: str | None
    timeout: Number | None
    seed_after: Number | None
    max_failed_peers: int | str | None
    upload_rate_limit: int | str | None
    download_rate_limit: int | str | None
    parallel: int | str | None
    python: str | None
    wheel_dir: str | None
    force: bool | str | None
    layout: str | None
    piece_size: int | str | None
    libtorrent: Mapping[str, object] | None
    poll_interval: Number | None
    strict_host_keys: bool | str | None
    known_hosts: str | Sequence[str] | None
    ssh_backend: str | None
    keep_releases: int | str | None
    report: str | None
    hooks: Mapping[str, object] | None
    linked_dirs: str | Sequence[str] | None
    linked_files: str | Sequence[str] | None
    batch_size: int | str | None
    health_check: str | None


class Options(UntaggedOptions, total=False):
    """Overrides of the ``murder`` config keys (see :mod:`fabmurder.config`)."""

    tag: str | None
