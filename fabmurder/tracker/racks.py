"""Map a peer's address to its rack: a /24 by default, or subnets from a file.

The racks file has one ``CIDR rackname`` pair per line; ``#`` starts a
comment and blank lines are ignored. The longest matching prefix wins, and
an address no line matches falls back to its /24 (IPv6: its /64)::

    # rack A spans two subnets
    10.1.0.0/24   rack-a
    10.1.1.0/24   rack-a
    10.2.0.0/16   rack-b
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from fabmurder.errors import ConfigError

# Cache of address -> rack; cleared when full so it cannot grow without bound.
_CACHE_MAX = 65536


class RackMap:
    """Answer "which rack is this address in?" from an optional mapping."""

    def __init__(self, subnets: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str]) -> None:
        self._by_len: dict[tuple[int, int], dict[int, str]] = {}
        for net, name in subnets.items():
            table = self._by_len.setdefault((net.version, net.prefixlen), {})
            table[int(net.network_address)] = name
        # longest prefix first, so the first hit is the most specific one
        self._lengths = sorted(self._by_len, key=lambda vl: -vl[1])
        self._cache: dict[str, str] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> RackMap:
        """Read a racks file (``CIDR rackname`` per line).

        :raises ConfigError: on an unreadable file or a malformed line.
        """
        subnets: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read racks file {path}: {exc}", key="racks") from exc
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2:
                raise ConfigError(f"{path}:{number}: expected 'CIDR rackname'", key="racks")
            try:
                net = ipaddress.ip_network(words[0], strict=False)
            except ValueError:
                raise ConfigError(
                    f"{path}:{number}: invalid subnet {words[0]!r}", key="racks"
                ) from None
            subnets[net] = words[1]
        return cls(subnets)

    def rack_of(self, ip: str) -> str:
        """Return the rack name of an address (an IP literal)."""
        rack = self._cache.get(ip)
        if rack is not None:
            return rack
        addr = ipaddress.ip_address(ip)
        value = int(addr)
        bits = addr.max_prefixlen
        for version, length in self._lengths:
            if version != addr.version:
                continue
            mask = ((1 << length) - 1) << (bits - length) if length else 0
            name = self._by_len[(version, length)].get(value & mask)
            if name is not None:
                rack = name
                break
        else:
            default_len = 24 if addr.version == 4 else 64
            rack = str(ipaddress.ip_network(f"{ip}/{default_len}", strict=False))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = rack
        return rack
