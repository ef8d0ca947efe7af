"""The libtorrent settings profile: the one module that names libtorrent settings.

fabmurder runs libtorrent inside a datacenter, between hosts that all know
each other, behind a tracker the pipeline started. The defaults of
libtorrent are made for the open Internet (DHT, LSD, UPnP, uTP, deep request
queues, a 300 s minimum announce interval) and cost a deploy about twice the
one-NIC limit; ``docs/tuning.md`` records what is set here and why.
"""

from __future__ import annotations

import ipaddress
import json

from fabmurder.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the datacenter profile; values measured or reasoned in docs/tuning.md
DATACENTER: dict[str, Any] = {
    # Only the pipeline's tracker tells peers about each other.
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    # TCP only: uTP cost about 2.7x the CPU in the lab for no gain on a LAN.
    "enable_incoming_utp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_tcp": True,
    "enable_outgoing_tcp": True,
    # Short request queues: deep queues pile every peer's requests on the
    # seeder; the seeder's advertised in-queue caps what each peer reserves.
    "max_out_request_queue": 16,
    # 8 rather than 16: the seeder sent 1.16 x S instead of 1.25 x S at 8
    # peers (docs/performance.md); 4 measured the same as 8.
    "max_allowed_in_request_queue": 8,
    "request_queue_time": 1,
    "whole_pieces_threshold": 0,
    "suggest_mode": 0,
    # Re-announce promptly so late joiners and a restarted tracker are seen.
    "min_announce_interval": 2,
    "tracker_completion_timeout": 5,
    "tracker_receive_timeout": 5,
    "stop_tracker_timeout": 2,
    # One agent per address. With several allowed, a peer that sent bad
    # pieces is banned only for that one connection and comes straight back
    # on a new one; measured on the fleet, a lying node then kept four
    # honest peers below 90 % until they timed out. Off, each honest peer
    # bans it after one failed piece.
    "allow_multiple_connections_per_ip": False,
    # A fleet, not a handful of strangers: many connections, no unchoke cap.
    "connections_limit": 2000,
    "unchoke_slots_limit": -1,
    "max_peerlist_size": 10000,
    # Ask the tracker for this many peers: a seeder must learn every leecher
    # (the tracker gives a peer that joined as a seeder up to 5000).
    "num_want": 2000,
    "connection_speed": 200,
    "torrent_connect_boost": 200,
    "min_reconnect_time": 1,
    "max_failcount": 10,
    "peer_connect_timeout": 5,
    "handshake_timeout": 5,
    # One torrent per session: never queue it behind auto-management limits.
    "active_downloads": -1,
    "active_seeds": -1,
    "active_limit": -1,
    "dont_count_slow_torrents": False,
    "close_redundant_connections": False,
    "send_buffer_watermark": 1024 * 1024,
    # Room for block alerts between two waits of the agent's loop.
    "alert_queue_size": 20000,
    # --allow is about peers; the tracker is the pipeline's own and must stay reachable.
    "apply_ip_filter_to_trackers": False,
    # SSRF mitigation refuses a loopback tracker's /scrape (only /announce
    # passes); the torrent names only our tracker and DHT is off, so the
    # attack it guards against cannot reach the agent.
    "ssrf_mitigation": False,
}

#: alert categories the agent reads (status, errors, storage, tracker)
ALERT_CATEGORIES = (
    "error_notification",
    "status_notification",
    "storage_notification",
    "tracker_notification",
    "performance_warning",
    # block and piece alerts: how the agent tells seeder bytes from peer bytes
    "block_progress_notification",
    "piece_progress_notification",
)


def _alert_mask() -> int:
    # Imported lazily so that reading the profile needs no libtorrent.
    import libtorrent as lt

    mask = 0
    for name in ALERT_CATEGORIES:
        mask |= int(getattr(lt.alert.category_t, name))
    return mask


def settings(bind_addr: str, port: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the settings pack for an agent listening on ``bind_addr:port``.

    :param bind_addr: the host's fleet address; the agent listens only there,
        announces it and binds outgoing connections to it.
    :param port: the listen port.
    :param overrides: settings from ``--settings`` JSON, applied last.
    :raises ConfigError: if ``bind_addr`` is not an IP address or ``port`` is out of range.
    """
    addr = _parse_ip(bind_addr, "bind address")
    if addr.is_unspecified:
        raise ConfigError(f"refusing to listen on all interfaces ({bind_addr})", key="bind")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"port {port} is out of range", key="port")
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    pack: dict[str, Any] = dict(DATACENTER)
    pack.update(
        {
            "listen_interfaces": f"{host}:{int(port)}",
            "outgoing_interfaces": str(addr),
            "announce_ip": str(addr),
            "alert_mask": _alert_mask(),
        }
    )
    if overrides:
        pack.update(overrides)
    return pack


#: libtorrent's request unit; every queue length above counts these blocks
BLOCK = 16 * 1024
#: how far the request queues may grow for a torrent of small blocks
MAX_QUEUE_SCALE = 8


def request_queues(size: int, lengths: list[int]) -> dict[str, Any]:
    """Return deeper request queues for a torrent of small pieces (a tree of small files).

    The queues count blocks, and were measured on tarballs, whose blocks
    are all 16 KiB. A tree release's pieces end with their files, so each
    block of a small file is a few KiB, and each is a disk job of its own
    on the seeder (a file opened and read): with the profile's queues a
    peer waited out a round trip every 8 of them. 10,000 files of 1-8 KiB
    (mean block 4.6 KB) to one peer on loopback, libtorrent 2.1.1, in
    alternation: queues of 8 (in) / 16 (out) downloaded in 5.8-8.8 s (four
    runs), 32 / 64 in 5.8-6.2 s, 64 / 128 in 3.9-5.1 s, 128 / 128 in
    3.3-5.4 s (two each; docs/delta.md). Both queues grow by the square of the mean block's
    shortfall from 16 KiB, at most MAX_QUEUE_SCALE times: a torrent of
    full blocks (a tarball, or a tree of large files) keeps the profile's.

    :param size: the payload bytes.
    :param lengths: each piece's payload bytes.
    """
    blocks = sum(-(-n // BLOCK) for n in lengths)
    if not size or blocks * BLOCK <= size:
        return {}
    scale = min(MAX_QUEUE_SCALE, (blocks * BLOCK / size) ** 2)
    names = ("max_out_request_queue", "max_allowed_in_request_queue")
    return {name: round(int(DATACENTER[name]) * scale) for name in names}


#: the seeder's in-queue never falls below this many blocks per peer
MIN_SEEDER_QUEUE = 2


def seeder_queue(depth: int, peers: int) -> int:
    """Return the seeder's ``max_allowed_in_request_queue`` for a swarm of ``peers``.

    Each peer keeps that many block requests at the seeder (the seeder
    advertises it), and once its own stripe is requested, the rest of its
    queue there goes to the pieces only the seeder holds yet: the other
    peers' stripes, which the seeder is sending to them too. So the
    seeder's duplicates grow with ``peers`` x its in-queue. Cut to keep
    about ``2 x depth`` requests at the seeder over all its peers (never
    fewer than MIN_SEEDER_QUEUE each), they fell in the lab, one run each
    on a quiet machine (8 MiB, 10 Mbit/s per host, S/B = 7.0 s; docs/tuning.md):
    at N = 64 from 1.33 to 1.08 x S sent, the transfer from 9.41 to 7.76 s;
    at N = 8 from 1.40 to 1.08 x S, 9.85 to 7.88 s. At 50 Mbit/s (64 MiB, N = 4
    and 16) a queue of 2 was as fast as 8. A swarm of one or two peers keeps
    ``depth``: a single peer needs a deep queue to fill a fast link alone.

    :param depth: the queue the profile (or :func:`request_queues`) gives.
    """
    if peers <= 2:
        return depth
    return max(MIN_SEEDER_QUEUE, min(depth, 2 * depth // peers))


def parse_overrides(text: str | None) -> dict[str, Any]:
    """Parse ``--settings`` JSON into a dict of setting overrides.

    :raises ConfigError: if the text is not a JSON object of scalar values.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--settings is not valid JSON: {exc}", key="settings") from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, bool | int | str) for k, v in value.items()
    ):
        raise ConfigError(
            "--settings must be a JSON object of setting names to numbers, booleans or strings",
            key="settings",
        )
    return value


def rate_limits(upload: int | None, download: int | None) -> dict[str, Any]:
    """Return the settings for upload/download limits in bytes per second (0 = none)."""
    pack: dict[str, Any] = {}
    if upload:
        pack["upload_rate_limit"] = int(upload)
    if download:
        pack["download_rate_limit"] = int(download)
    return pack


def _parse_ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ConfigError(f"invalid {what} {text!r}: not an IP address", key="bind") from exc


def networks(allowed: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Parse CIDRs and plain addresses into networks.

    :raises ConfigError: naming the first entry that is neither.
    """
    nets = []
    for entry in allowed:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"invalid --allow entry {entry!r}: {exc}", key="allow") from exc
    return nets


def ip_filter(allowed: list[str]) -> Any:
    """Build a libtorrent ``ip_filter`` that admits only ``allowed`` (CIDRs or addresses).

    Everything else, IPv4 and IPv6, is blocked.
    """
    import libtorrent as lt

    filt = lt.ip_filter()
    filt.add_rule("0.0.0.0", "255.255.255.255", 1)
    filt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
    for net in networks(allowed):
        filt.add_rule(str(net.network_address), str(net.broadcast_address), 0)
    return filt


def peer_class_filter() -> Any:
    """Put every address, private or public, in libtorrent's ``global`` peer class.

    By default private ranges (and loopback) fall in the ``local`` class,
    which ignores rate limits, while public ones fall in ``global``. A fleet
    on private addresses would then ignore ``--upload-rate-limit``, and the
    same deploy would behave differently on public ones; one class for all
    makes limits apply everywhere (with ``unchoke_slots_limit`` -1, the
    class costs nothing when no limit is set).
    """
    import libtorrent as lt

    everyone = 1 << int(lt.session.global_peer_class_id)
    filt = lt.ip_filter()
    filt.add_rule("0.0.0.0", "255.255.255.255", everyone)
    filt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
    return filt
