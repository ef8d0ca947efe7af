"""The fleet's network: a bridge in the root namespace, one netns and veth pair per host.

Names follow one convention, so that :func:`leftovers` finds what a crashed
run left behind from the name alone (interface names are limited to 15
characters, hence the short fleet names):

- bridge ``fmb-<fleet>``;
- host network namespace ``fm-<fleet>-<i>``;
- root-side veth ``fmv-<fleet>-<i>``; its peer is ``eth0`` inside the host.

Hosts get no default route: they reach each other and the control address
on the bridge, and nothing else.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from fabmurder.testing.proc import FleetError, run

RUN_DIR = "/run/fabmurder"
DEFAULT_POOL = ipaddress.IPv4Network("10.231.0.0/16")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,4}$")
# A tbf burst under 128 KiB makes the shaper segment every GSO packet (see FACTS).
MIN_BURST = 128 * 1024

T = TypeVar("T")
R = TypeVar("R")


def validate_name(name: str) -> str:
    """Return *name* if it can name a fleet (1-5 of ``a-z0-9``, starting with a letter)."""
    if not NAME_RE.match(name):
        raise FleetError(
            f"invalid fleet name {name!r}: use 1 to 5 characters a-z0-9, starting with a letter"
        )
    return name


def bridge_name(fleet: str) -> str:
    return f"fmb-{fleet}"


def netns_name(fleet: str, index: int) -> str:
    return f"fm-{fleet}-{index}"


def veth_name(fleet: str, index: int) -> str:
    return f"fmv-{fleet}-{index}"


@contextmanager
def subnet_lock() -> Iterator[None]:
    """Hold the machine-wide lock under which fleets choose and claim a subnet."""
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    with open(os.path.join(RUN_DIR, "subnet.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """Return every IPv4 network this machine routes to or has an address in."""
    found: list[ipaddress.IPv4Network] = []
    for route in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(run(["ip", "-j", "-4", "addr"]) or "[]"):
        for addr in link.get("addr_info", []):
            found.append(
                ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            )
    return found


#: the most hosts one /24 of a fleet holds (.0, .1 and .255 are not hosts')
PER_RACK = 253


def rack_prefix(racks: int) -> int:
    """Return the prefix length of a block of at least *racks* /24 networks."""
    return 24 - max(0, (racks - 1).bit_length())


def choose_subnet(
    wanted: str | None = None, pool: ipaddress.IPv4Network = DEFAULT_POOL, prefix: int = 24
) -> ipaddress.IPv4Network:
    """Return *wanted*, or the first block of *pool* with *prefix*, that overlaps nothing here.

    Call it under :func:`subnet_lock`, and keep the lock until the bridge owns
    the subnet, so two fleets never pick the same one.
    """
    used = networks_in_use()
    candidates = [ipaddress.IPv4Network(wanted)] if wanted else pool.subnets(new_prefix=prefix)
    for net in candidates:
        if not any(net.overlaps(other) for other in used):
            return net
    if wanted:
        raise FleetError(f"subnet {wanted} overlaps a route or address on this machine")
    raise FleetError(f"no free /{prefix} left in {pool}")


def rack_addresses(block: ipaddress.IPv4Network, count: int, racks: int) -> list[str]:
    """Return *count* host addresses spread evenly over the first *racks* /24s of *block*.

    Hosts fill one /24 after another (host 1, the tracker and seeder, is in
    the first), from .2 up, so a tracker that groups peers by /24 sees
    *racks* racks. The first /24's .1 is the control address.
    """
    nets = list(block.subnets(new_prefix=24))[:racks] if block.prefixlen <= 24 else [block]
    if len(nets) < racks:
        raise FleetError(f"{block} holds {len(nets)} /24 networks, not {racks}")
    per_rack = -(-count // racks)
    if per_rack > PER_RACK:
        raise FleetError(f"{count} hosts in {racks} racks: more than {PER_RACK} in a /24")
    return [str(nets[i // per_rack].network_address + 2 + i % per_rack) for i in range(count)]


@dataclass(frozen=True)
class Link:
    """One host's place on the network."""

    index: int
    netns: str
    veth: str
    address: str


#: the kernel's ARP table limits (``net.ipv4.neigh.default``), set in the root namespace
NEIGH_SYSCTL = "/proc/sys/net/ipv4/neigh/default/gc_thresh{}"
#: the most ARP entries a fleet asks the kernel to keep room for
NEIGH_MAX = 1 << 22


def neighbour_room(count: int) -> tuple[int, int, int]:
    """Return the ARP table thresholds (gc_thresh1-3) a fleet of ``count`` hosts needs.

    Linux keeps one ARP table for every network namespace, and its hard cap
    (gc_thresh3, 1,024 by default) counts the entries of all of them. A
    swarm is a full mesh: each of N hosts learns up to N neighbours, N² in
    all. At 65 hosts (4,225 entries) the table overflowed ("neighbor table
    overflow!" in dmesg), and the hosts that came last could reach nobody:
    their announces sat in SYN-SENT, and the seeder had to make up for
    them. Room for twice the mesh leaves space for a second fleet.
    """
    mesh = min(NEIGH_MAX, 2 * (count + 1) ** 2)
    return max(128, mesh // 4), max(512, mesh // 2), max(1024, mesh)


def make_neighbour_room(count: int) -> None:
    """Raise (never lower) the kernel's ARP table limits to what ``count`` hosts need."""
    for i, wanted in enumerate(neighbour_room(count), 1):
        path = NEIGH_SYSCTL.format(i)
        with open(path) as fh:
            current = int(fh.read())
        if wanted > current:
            with open(path, "w") as fh:
                fh.write(f"{wanted}\n")


def create_bridge(fleet: str, net: ipaddress.IPv4Network) -> str:
    """Create the fleet's bridge with the control address (the first host address) on it."""
    bridge = bridge_name(fleet)
    control = f"{next(net.hosts())}/{net.prefixlen}"
    # nf_call_iptables 0: bridged host-to-host traffic must not depend on this machine's firewall.
    run(["ip", "link", "add", bridge, "type", "bridge", "nf_call_iptables", "0"])
    run(["ip", "addr", "add", control, "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    return control.split("/")[0]


def create_hosts(fleet: str, net: ipaddress.IPv4Network, count: int, racks: int = 1) -> list[Link]:
    """Create *count* namespaces with a veth on the bridge each, addressed from *net*.

    With *racks* above 1 the addresses span that many /24 networks of *net*
    (:func:`rack_addresses`); every host has *net*'s prefix, so all of them
    are on one link.
    """
    addresses = rack_addresses(net, count, racks)
    bridge = bridge_name(fleet)
    links = [
        Link(i, netns_name(fleet, i), veth_name(fleet, i), addresses[i - 1])
        for i in range(1, count + 1)
    ]
    batch = [f"netns add {link.netns}" for link in links]
    for link in links:
        batch.append(f"link add {link.veth} type veth peer name eth0 netns {link.netns}")
        batch.append(f"link set {link.veth} master {bridge} up")
    run(["ip", "-batch", "-"], input="\n".join(batch) + "\n")

    def configure(link: Link) -> None:
        inner = [
            f"addr add {link.address}/{net.prefixlen} dev eth0",
            "link set lo up",
            "link set eth0 up",
        ]
        run(["ip", "-n", link.netns, "-batch", "-"], input="\n".join(inner) + "\n")

    parallel(configure, links)
    return links


def shape(links: Sequence[Link], rate_mbit: float) -> None:
    """Cap each host's upload (its eth0) and download (the root-side veth) at *rate_mbit*."""
    burst = max(MIN_BURST, int(rate_mbit * 1e6 / 8 / 100))
    tbf = ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "50ms"]
    root_side = [f"qdisc replace dev {link.veth} {' '.join(tbf)}" for link in links]
    run(["tc", "-batch", "-"], input="\n".join(root_side) + "\n")
    parallel(
        lambda link: run(["tc", "-n", link.netns, "qdisc", "replace", "dev", "eth0", *tbf]),
        links,
    )


def set_link(veth: str, up: bool) -> None:
    """Connect or cut a host's cable (its root-side veth)."""
    run(["ip", "link", "set", veth, "up" if up else "down"])


def leftovers(fleet: str) -> tuple[list[str], list[str]]:
    """Return the namespaces and root-side links (veths, bridge) named after *fleet*."""
    ns_re = re.compile(rf"^fm-{re.escape(fleet)}-\d+$")
    link_re = re.compile(rf"^(fmv-{re.escape(fleet)}-\d+|fmb-{re.escape(fleet)}(-\d+)?)$")
    namespaces = [
        ns["name"]
        for ns in json.loads(run(["ip", "-j", "netns", "list"]) or "[]")
        if ns_re.match(ns["name"])
    ]
    links = [
        link["ifname"]
        for link in json.loads(run(["ip", "-j", "link", "show"]) or "[]")
        if link_re.match(link["ifname"])
    ]
    return namespaces, links


def netns_pids(netns: str) -> list[int]:
    """Return the PIDs of every process inside *netns*."""
    return [int(p) for p in run(["ip", "netns", "pids", netns], check=False).split()]


def remove(namespaces: Sequence[str], links: Sequence[str]) -> None:
    """Delete the root-side links (veths before bridges), then the namespaces."""
    veths = sorted((n for n in links if n.startswith("fmv-")), key=len)
    bridges = [n for n in links if not n.startswith("fmv-")]
    batch = [f"link del {n}" for n in [*veths, *bridges]] + [f"netns del {n}" for n in namespaces]
    if batch:
        # -force: keep going if something vanished in the meantime (down is idempotent).
        run(["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n", check=False)


def parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Call *fn* on every item from a small thread pool; return the results, re-raise errors."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return [future.result() for future in [pool.submit(fn, item) for item in items]]
