"""Speak the HTTP tracker protocol: parse announce and scrape, encode replies.

This module knows BEP 3 (announce), BEP 23 (compact peer lists), BEP 7
(``peers6``) and BEP 48 (scrape). It does no I/O and keeps no state: the
server hands it a raw query string and gets back a request object or a
:class:`RequestError`, and the swarm hands it peers to encode.

Replies are bencoded with ``bencode.py``, except the compact announce reply,
which is the hot path of a deploy and is formatted directly (its bytes are
checked against ``bencode.py`` in the tests).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Final, TypedDict

import bencodepy

from fabmurder.errors import MurderError

EVENTS: Final = frozenset({b"", b"started", b"completed", b"stopped", b"paused"})

# Longest decimal a counter may have: 2**64 has 20 digits. Longer numbers are
# refused before int() so no request can make the tracker parse a huge value.
_MAX_DIGITS: Final = 20
_MAX_KEY_LEN: Final = 64
_MAX_PARAMS: Final = 64
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class RequestError(MurderError):
    """A tracker request is malformed; the message is the ``failure reason``."""


class ScrapeFile(TypedDict):
    """One swarm's entry in a scrape reply (BEP 48)."""

    complete: int
    downloaded: int
    incomplete: int


@dataclass(slots=True)
class Announce:
    """A validated announce request."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int  # -1 only on a ``stopped`` that did not say
    event: bytes
    numwant: int | None
    compact: bool
    no_peer_id: bool
    ip: str | None
    key: bytes | None


def _split(query: bytes) -> list[bytes]:
    parts = query.split(b"&") if query else []
    if len(parts) > _MAX_PARAMS:
        raise RequestError("too many parameters")
    return parts


def _decode(part: bytes) -> tuple[bytes, bytes]:
    """Split ``name=value`` and percent-decode both, strictly."""
    name, _, value = part.partition(b"=")
    if b"%" in part:
        if _BAD_PERCENT.search(part):
            raise RequestError("bad percent-encoding")
        if b"%" in name:
            name = _unquote(name)
        if b"%" in value:
            value = _unquote(value)
    return name, value


def parse_query(query: bytes) -> dict[bytes, list[bytes]]:
    """Split a raw query string into percent-decoded values, strictly.

    ``+`` is kept as a literal byte: info-hashes and peer ids are binary, and
    clients percent-encode everything that is not unreserved.

    :raises RequestError: on bad percent-encoding or too many parameters.
    """
    params: dict[bytes, list[bytes]] = {}
    for part in _split(query):
        if part:
            name, value = _decode(part)
            params.setdefault(name, []).append(value)
    return params


def _first_values(query: bytes) -> dict[bytes, bytes]:
    """Like :func:`parse_query`, keeping the first value of each name."""
    params: dict[bytes, bytes] = {}
    for part in _split(query):
        if part:
            name, value = _decode(part)
            params.setdefault(name, value)
    return params


def _unquote(raw: bytes) -> bytes:
    """Percent-decode bytes already checked to hold only valid ``%XX`` escapes."""
    # The C unicode_escape codec does the work; literal backslashes are escaped
    # first so that only the %XX -> \xXX escapes are interpreted.
    text = raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x").decode("unicode_escape")
    return text.encode("latin-1")


def _number(params: dict[bytes, bytes], name: bytes, default: int | None) -> int | None:
    raw = params.get(name)
    if raw is None or (raw == b"" and default is not None):
        return default
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:
        raise RequestError(f"invalid {name.decode()}")
    return int(raw)


def _required(params: dict[bytes, bytes], name: bytes) -> int:
    value = _number(params, name, None)
    if value is None:
        raise RequestError(f"missing {name.decode()}")
    return value


def _ipv4(raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
        return str(ipaddress.IPv4Address(text))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("invalid ip") from None


def parse_announce(query: bytes) -> Announce:
    """Validate the query string of ``GET /announce`` (BEP 3).

    ``numwant`` is returned as sent (``None`` when absent); the swarm caps it.

    :raises RequestError: naming the first problem found.
    """
    params = _first_values(query)
    get = params.get
    info_hash = get(b"info_hash")
    if info_hash is None:
        raise RequestError("missing info_hash")
    if len(info_hash) != 20:
        raise RequestError("invalid info_hash")
    peer_id = get(b"peer_id")
    if peer_id is None:
        raise RequestError("missing peer_id")
    if len(peer_id) != 20:
        raise RequestError("invalid peer_id")
    event = get(b"event") or b""
    if event not in EVENTS:
        raise RequestError("invalid event")
    port = _required(params, b"port")
    if not 0 < port < 65536:
        raise RequestError("invalid port")
    # A client that is leaving may omit ``left``: -1 stands for "not said".
    left = _number(params, b"left", -1 if event == b"stopped" else None)
    if left is None:
        raise RequestError("missing left")
    uploaded = _number(params, b"uploaded", 0)
    downloaded = _number(params, b"downloaded", 0)
    numwant = None if not get(b"numwant") else _number(params, b"numwant", None)
    compact = get(b"compact") != b"0"
    no_peer_id = get(b"no_peer_id") == b"1"
    raw_ip = get(b"ip")
    ip = _ipv4(raw_ip) if raw_ip else None
    key = get(b"key")
    if key is not None and len(key) > _MAX_KEY_LEN:
        raise RequestError("invalid key")
    assert uploaded is not None and downloaded is not None
    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=numwant,
        compact=compact,
        no_peer_id=no_peer_id,
        ip=ip,
        key=key,
    )


def parse_scrape(query: bytes) -> list[bytes]:
    """Return the info-hashes asked for by ``GET /scrape`` (empty: all swarms).

    :raises RequestError: on an info_hash that is not 20 bytes long.
    """
    hashes = parse_query(query).get(b"info_hash", [])
    for info_hash in hashes:
        if len(info_hash) != 20:
            raise RequestError("invalid info_hash")
    return list(dict.fromkeys(hashes))


def compact_peer(ip: str, port: int) -> bytes:
    """Encode one peer as 6 bytes (IPv4, BEP 23) or 18 bytes (IPv6, BEP 7)."""
    return ipaddress.ip_address(ip).packed + port.to_bytes(2, "big")


def encode_compact(
    complete: int, incomplete: int, interval: int, min_interval: int, peers: bytes, peers6: bytes
) -> bytes:
    """Bencode a compact announce reply; keys in the sorted order bencoding requires."""
    head = b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de5:peers%d:" % (
        complete,
        incomplete,
        interval,
        min_interval,
        len(peers),
    )
    if peers6:
        return b"%s%s6:peers6%d:%se" % (head, peers, len(peers6), peers6)
    return head + peers + b"e"


def encode_dict_peers(
    complete: int,
    incomplete: int,
    interval: int,
    min_interval: int,
    peers: list[tuple[bytes, str, int]],
    with_peer_id: bool,
) -> bytes:
    """Bencode an announce reply with the dictionary peer list (``compact=0``)."""
    entries: list[dict[bytes, Any]] = []
    for peer_id, ip, port in peers:
        entry: dict[bytes, Any] = {b"ip": ip.encode("ascii"), b"port": port}
        if with_peer_id:
            entry[b"peer id"] = peer_id
        entries.append(entry)
    return bencodepy.encode(
        {
            b"complete": complete,
            b"incomplete": incomplete,
            b"interval": interval,
            b"min interval": min_interval,
            b"peers": entries,
        }
    )


def encode_scrape(files: dict[bytes, ScrapeFile]) -> bytes:
    """Bencode a scrape reply (BEP 48)."""
    return bencodepy.encode(
        {b"files": {h: {k.encode(): v for k, v in f.items()} for h, f in files.items()}}
    )


def encode_failure(reason: str) -> bytes:
    """Bencode a ``failure reason`` reply, the way clients expect errors."""
    return bencodepy.encode({b"failure reason": reason.encode("utf-8", "replace")})
