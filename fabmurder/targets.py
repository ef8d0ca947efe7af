"""Which hosts a run targets: a subset of ``murder.peers``, and Fabric's ``-H``.

fabmurder's tasks orchestrate three roles, so they take their hosts from
the ``murder`` config, never from Fabric's ``-H``: with ``-H`` Fabric runs a
task once per host (``fab -H a,b murder.deploy`` would be two whole
deploys). :func:`refuse_host_flag` therefore refuses a task that was given
hosts that way, and points at ``--peers``. :func:`subset` checks the peers a
run was narrowed to (``--peers``, or the function layer's ``hosts=``)
against ``murder.peers``, so that a typo never deploys to a host nobody
configured.

:func:`murder_defaults` is what a fabfile declares at its root so that
``FABRIC_MURDER_*`` reaches its own root-level tasks, and
:func:`accept_env_lists` lets such a variable set a key that a config file
gives as a YAML list (``FABRIC_MURDER_PEERS="web1 web2"``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from invoke.env import Environment

from fabmurder.config import DEFAULTS, Settings
from fabmurder.config_values import host_list, split_host
from fabmurder.errors import ConfigError

HOST_FLAG_REFUSED = (
    "fabmurder's tasks take their hosts from the murder config and refuse Fabric's "
    "-H/--hosts (Fabric would run the whole task once per host); to deploy to some "
    "peers only, give --peers HOST[,HOST...] (a subset of murder.peers)"
)


def murder_defaults() -> dict[str, Any]:
    """Return ``{"murder": {...every key's default...}}`` for a fabfile's root ``ns.configure``.

    Invoke loads ``FABRIC_MURDER_*`` only into keys the running task's
    collection declares. fabmurder's collection declares them for
    ``murder.*``; a root-level task of your own needs them declared at the
    root: ``ns.configure(fabmurder.murder_defaults())``.
    """
    return {"murder": copy.deepcopy(DEFAULTS)}


def parse_hosts(value: str | Sequence[str] | None) -> list[str] | None:
    """Return the host strings a flag or config value names (comma or space separated)."""
    if value is None:
        return None
    return list(host_list(value, "peers"))


def subset(s: Settings, hosts: Iterable[str] | str | None) -> list[str]:
    """Return the peers a run targets: ``hosts`` (a subset of ``murder.peers``), else all.

    :raises ConfigError: naming each host that is not one of ``murder.peers``,
        or when ``hosts`` names none.
    """
    if hosts is None:
        return list(s.peers)
    named = parse_hosts(hosts) or [] if isinstance(hosts, str) else list(hosts)
    chosen = list(dict.fromkeys(named))
    if not chosen:
        raise ConfigError("--peers names no host", key="peers")
    for host in chosen:
        split_host(host)
    unknown = [h for h in chosen if h not in s.peers]
    if unknown and s.peers:
        raise ConfigError(
            f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not in murder.peers "
            f"({', '.join(s.peers)}); --peers picks a subset of the configured peers",
            key="peers",
        )
    return chosen


_original_path_set = Environment._path_set


def _path_set(self: Environment, key_path: Sequence[str], value: str) -> None:
    """Set a ``murder`` key given as a list in a config file from an env string, as a string.

    Invoke casts an environment string to the type the key has in the config
    it merged so far, and raises ``UncastableEnvVar`` for a list. fabmurder
    parses its host and path lists from a string as well
    (comma or space separated), so under ``murder`` the string is kept.
    """
    if key_path and key_path[0] == "murder" and isinstance(self._path_get(key_path), list | tuple):
        obj = self.data
        for key in key_path[:-1]:
            obj = obj.setdefault(key, {})
        obj[key_path[-1]] = value
        return
    _original_path_set(self, key_path, value)


def accept_env_lists() -> None:
    """Let ``FABRIC_MURDER_<KEY>`` set a ``murder`` key that a config file gives as a list.

    Done once when :mod:`fabmurder.tasks` is imported (your fabfile imports
    it), before Invoke reads the environment for the first task.
    """
    Environment._path_set = _path_set  # type: ignore[method-assign]
