"""The control host's pool at scale: its file descriptor limit grows with the run (#16)."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
from invoke import Context

from fabmurder.config import settings
from fabmurder.remote import FD_SPARE, open_pool


@pytest.fixture
def low_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_pool_for_3000_hosts_raises_the_soft_fd_limit_to_what_they_need(low_limit: int) -> None:
    peers = [f"web{i}" for i in range(3000)]
    s = settings(Context(), peers=peers, seeder="seed1", tracker="seed1")
    with open_pool(Context(), s):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == min(low_limit, 2 * 3001 + FD_SPARE)


def test_a_small_run_leaves_a_limit_that_is_already_enough(low_limit: int) -> None:
    s = settings(Context(), peers=["web1", "web2"], seeder="seed1", tracker="seed1")
    open_pool(Context(), s).close()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 1024
