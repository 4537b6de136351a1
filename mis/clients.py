"""Who is calling the API: the client's real address behind trusted proxies, and the
counters that limit it, kept in Redis so that every signalling node sharing it enforces
one limit (nothing here is per process).

`X-Forwarded-For` is read only from a peer in `http.trusted_proxies`, from the right: each
trusted proxy appended the address it saw, so the first address from the right that is
not a trusted proxy is the client. Anything left of it was written by the client and is
ignored; a malformed entry stops the walk at the proxy that passed it on.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

__all__ = ["Network", "client_address", "count", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PREFIX = "telemed:api:limit:"


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR blocks (`10.0.0.0/8`, `::1`), or ValueError naming the bad one."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
             trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str],
                   trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or, behind trusted proxies, the one they saw."""
    current = _address(peer or "")
    if current is None:
        return peer or "?"
    hops = [h for header in forwarded_for for h in header.split(",") if h.strip()]
    while _trusted(current, trusted) and hops:
        seen = _address(hops.pop())
        if seen is None:
            break  # garbage a trusted proxy passed on: its own address is all we know
        current = seen
    return str(current)


async def count(redis: aioredis.Redis, what: str, key: str, window: int = 60) -> int:
    """Adds one to `what` for `key` in the current `window` (seconds) and returns the
    count: one fixed window per key, shared by every node, gone when it ends."""
    name = PREFIX + what + ":" + hashlib.sha256(key.encode()).hexdigest()[:32]
    async with redis.pipeline(transaction=True) as tx:
        tx.incr(name)
        tx.expire(name, window, nx=True)
        result: list[Any] = await tx.execute()
    return int(result[0])
