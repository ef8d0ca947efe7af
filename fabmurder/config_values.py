"""How each value of the ``murder`` subtree is read: host strings, host lists, numbers, flags.

:func:`fabmurder.config.settings` calls these once per run; each raises
:class:`~fabmurder.errors.ConfigError` naming the key and the value it
could not read, before any host is touched.
"""

from __future__ import annotations

import posixpath
from typing import Any

from fabmurder.errors import ConfigError
from fabmurder.host import privatedir


def split_host(host: str) -> tuple[str | None, str, int | None]:
    """Split a ``user@host:port`` host string into its three parts.

    :raises ConfigError: if the port is not a number.
    """
    user, _, rest = host.rpartition("@")
    port: int | None = None
    hostname = rest
    if rest.startswith("["):  # [v6addr]:port
        hostname, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = port_of(tail[1:], host)
    elif rest.count(":") == 1:
        hostname, _, tail = rest.partition(":")
        port = port_of(tail, host)
    return (user or None), hostname, port


def port_of(text: str, host: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"host string {host!r} has a non-numeric port {text!r}") from None


def host_key(host: str) -> tuple[str, int]:
    _, hostname, port = split_host(host)
    return hostname.lower(), port or 22


def host_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"murder.{key} must be a list of host strings, not {value!r}", key=key)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"murder.{key} holds an invalid host string: {item!r}", key=key)
    return tuple(item.strip() for item in items)


def number(value: Any, key: str, kind: type) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"murder.{key} must be a number, not {value!r}", key=key)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"murder.{key} must be a number, not {value!r}", key=key) from None
    if number < 0:
        raise ConfigError(f"murder.{key} must not be negative, got {value!r}", key=key)
    return number


def boolean(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"murder.{key} must be true or false, not {value!r}", key=key)


def refuse_shared_temp(path: str) -> None:
    """Refuse a ``temp_path`` every user of a host shares (``clean`` empties it of our names).

    :raises ConfigError: naming the path, before any host is touched.
    """
    if path.startswith("~/"):
        # the home itself (or above it) holds files that are not ours to clean
        below_home = posixpath.normpath(path[2:])
        shared = below_home == "." or below_home.startswith("..")
    else:
        # as spelled: what a path resolves to is each host's business (privatedir.ensure)
        shared = posixpath.normpath(path) in privatedir.SHARED_DIRS
    if shared:
        raise ConfigError(
            f"murder.temp_path {path!r} is a directory other users share or own; fabmurder "
            "needs one of the deploy user's own, such as the default ~/.cache/fabmurder/tmp",
            key="temp_path",
        )


def check_roles(seeder: str | None, peers: tuple[str, ...]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for host in peers:
        key = host_key(host)
        if key in seen:
            raise ConfigError(
                f"murder.peers names the same host twice: {seen[key]!r} and {host!r}",
                key="peers",
            )
        seen[key] = host
    if seeder and host_key(seeder) in seen:
        raise ConfigError(
            f"host {seeder!r} is both the seeder and a peer; a host may play one of these roles",
            key="peers",
        )
