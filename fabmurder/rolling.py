"""Rolling publish: switch the peers in batches, check each batch, revert on a failed check.

``murder.batch_size`` is a number of hosts or a percentage (``"25%"``) of
the peers that received the release; unset, all switch at once.
``murder.health_check`` is a shell command run in ``destination_path/current``
on each host of a batch just switched. When it fails anywhere, every host
switched in this run, in any batch, is pointed back at the release it had,
and the deploy fails with a :class:`~fabmurder.errors.HealthCheckError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fabric import Connection

from fabmurder.errors import ConfigError, HealthCheckError
from fabmurder.layout import HostReleases, Layout
from fabmurder.remote import ConnectionPool, quote, shell
from fabmurder.report import Event, EventCallback
from fabmurder.switching import previous_of, publish_on, states, switch


def batch_count(value: object, total: int) -> int:
    """Return the batch size ``value`` means for ``total`` hosts (at least 1).

    :raises ConfigError: unless it is a whole number or a percentage above 0.
    """
    if value in (None, "", 0, "0"):
        return max(1, total)
    text = str(value).strip()
    try:
        number = float(text[:-1]) if text.endswith("%") else int(text)
    except ValueError:
        number = 0
    if isinstance(value, bool) or number <= 0 or (text.endswith("%") and number > 100):
        raise ConfigError(
            f"murder.batch_size must be a number of hosts or a percentage, not {value!r}",
            key="batch_size",
        )
    size = math.ceil(total * number / 100) if text.endswith("%") else int(number)
    return max(1, size)


def batches(hosts: Sequence[str], size: int) -> list[list[str]]:
    """Return ``hosts`` in batches of ``size``, in order."""
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]


def check_on(
    pool: ConnectionPool, lay: Layout, hosts: Sequence[str], command: str
) -> dict[str, str]:
    """Run the health check on ``hosts`` (in ``current``); return host -> why it failed."""

    def one(conn: Connection) -> None:
        shell(conn, f"cd -- {quote(lay.current)} && {command}", "health check", timeout=300)

    return pool.fan_out(hosts, one).failed


def publish(
    pool: ConnectionPool,
    lay: Layout,
    tag: str,
    hosts: Sequence[str],
    emit: EventCallback,
    *,
    batch_size: object = None,
    health_check: str | None = None,
    switched: dict[str, str | None] | None = None,
    listed: dict[str, HostReleases] | None = None,
) -> dict[str, str | None]:
    """Point ``current`` at ``tag`` on ``hosts``, batch by batch, each checked.

    :param switched: filled with host -> previous release as hosts switch
        (so a caller sees them even when a later batch fails).
    :param listed: filled with host -> its releases as its switch listed
        them, every batch's (the deploy's cleanup acts on them); emptied
        when a failed check reverts the run.
    :returns: host -> the release ``current`` pointed to before.
    :raises HealthCheckError: after reverting every host switched in this run.
    """
    done = switched if switched is not None else {}
    after = listed if listed is not None else {}
    groups = batches(list(hosts), batch_count(batch_size, len(hosts)))
    for number, group in enumerate(groups, 1):
        if len(groups) > 1:
            emit(Event("phase", f"batch {number} of {len(groups)}: {', '.join(group)}"))
        batch = publish_on(pool, lay, tag, group, "deploy", emit)
        done.update(previous_of(batch))
        after.update({host: value.after for host, value in batch.items()})
        failed = check_on(pool, lay, group, health_check) if health_check else {}
        if failed:
            reverted = revert(pool, lay, done, emit)
            done.clear()
            after.clear()
            raise HealthCheckError(
                f"the health check failed in batch {number} of {len(groups)}; "
                f"{len(reverted)} host(s) switched in this run were put back",
                failed,
                reverted,
            )
    return done


def revert(
    pool: ConnectionPool, lay: Layout, previous: dict[str, str | None], emit: EventCallback
) -> dict[str, str | None]:
    """Point each host back at ``previous[host]``; return host -> release it is on now.

    A host that had no release before keeps the new one (there is nothing to
    go back to); it is named with None.
    """
    back = {h: p for h, p in previous.items() if p and not p.startswith("/")}
    targets = {h: p.removeprefix("releases/") for h, p in back.items()}
    emit(Event("phase", f"reverting {len(targets)} host(s) to their previous release"))
    if targets:
        switch(pool, lay, targets, states(pool, lay, targets), "revert", emit)
    return {h: targets.get(h) for h in previous}
