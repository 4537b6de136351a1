"""What the candidate filter must decide, written independently of signaling/candidates.py:
from the grammar of RFC 8445 §5.1 (RFC 5245 §15.1), the IANA IPv4 and IPv6 Special-Purpose
Address Registries, and our threat model (a client must not make the media server send to
its own host, nor to an address that is no unicast peer). One regular expression and one
table instead of the filter's tokenizer and `ipaddress` properties; IPv6 text is read by the
C library's `inet_pton`, IPv4 by our own pattern.
"""

from __future__ import annotations

import re
import socket
from typing import Literal

Decision = Literal["end", "keep", "drop", "invalid"]

_TOKEN = r"[!#$%&'*+\-.^_`{|}~A-Za-z0-9]+"  # RFC 4566 token
_GRAMMAR = re.compile(
    r"(?P<foundation>[A-Za-z0-9+/]{1,32})"      # foundation = 1*32ice-char
    r" +(?P<component>[0-9]{1,5})"               # component-id = 1*5DIGIT
    rf" +(?P<transport>{_TOKEN})"                # transport = "UDP" / transport-extension
    r" +(?P<priority>[0-9]{1,10})"               # priority = 1*10DIGIT
    r" +(?P<address>[^ ]+)"                      # connection-address, checked below
    r" +(?P<port>[0-9]{1,5})"                    # port
    rf" +typ +(?P<type>{_TOKEN})"                # cand-type = "typ" SP candidate-types
    r"(?P<extensions>(?: +[\x21-\x7e]+ +[\x21-\x7e]+)*)"  # *(SP name SP value)
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_HOSTNAME = re.compile(r"[A-Za-z0-9.\-]{4,255}")  # RFC 4566 FQDN = 4*(alpha-numeric/"-"/".")
_ZONE = re.compile(r"[A-Za-z0-9._~\-]+")

#: IANA IPv4 Special-Purpose Address Registry (plus 224/4 multicast from the IPv4 address
#: space registry): True where a candidate may name it. Private and shared ranges stay:
#: a call inside one network or carrier needs them.
IPV4_SPECIAL: list[tuple[str, bool]] = [
    ("0.0.0.0/8", False),        # "this network": no peer
    ("10.0.0.0/8", True),        # private
    ("100.64.0.0/10", True),     # shared address space (CGN)
    ("127.0.0.0/8", False),      # loopback: the media server itself
    ("169.254.0.0/16", False),   # link-local: the media server's own link
    ("172.16.0.0/12", True),     # private
    ("192.0.0.0/24", True),      # IETF protocol assignments (TURN anycast among them)
    ("192.0.2.0/24", True),      # documentation
    ("192.31.196.0/24", True),   # AS112-v4
    ("192.52.193.0/24", True),   # AMT
    ("192.88.99.0/24", True),    # deprecated 6to4 relay anycast
    ("192.168.0.0/16", True),    # private
    ("192.175.48.0/24", True),   # direct delegation AS112
    ("198.18.0.0/15", True),     # benchmarking
    ("198.51.100.0/24", True),   # documentation
    ("203.0.113.0/24", True),    # documentation
    ("224.0.0.0/4", False),      # multicast
    ("240.0.0.0/4", False),      # reserved, with 255.255.255.255/32 limited broadcast
]
#: IANA IPv6 Special-Purpose Address Registry, and ::/8 and ff00::/8 from the IPv6 address
#: space registry. ::ffff:0:0/96 is not in the table: its IPv4 address is judged instead.
IPV6_SPECIAL: list[tuple[str, bool]] = [
    ("::/8", False),             # ::1 loopback, :: unspecified, ::a.b.c.d compatible, …
    ("64:ff9b::/96", True),      # NAT64: the translator is elsewhere
    ("64:ff9b:1::/48", True),
    ("100::/64", True),          # discard-only: harmless
    ("2001::/23", True),
    ("2001:db8::/32", True),     # documentation
    ("2002::/16", True),         # 6to4
    ("fc00::/7", True),          # unique-local: private
    ("fe80::/10", False),        # link-local
    ("ff00::/8", False),         # multicast
]


def _v4_int(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _in(value: int, bits: int, network: str) -> bool:
    base, length = network.split("/")
    if bits == 32:
        start = _v4_int(base)
    else:
        start = int.from_bytes(socket.inet_pton(socket.AF_INET6, base), "big")
    shift = bits - int(length)
    return value >> shift == start >> shift


def _allowed(value: int, bits: int) -> bool:
    table = IPV4_SPECIAL if bits == 32 else IPV6_SPECIAL
    # The longest matching prefix decides; outside every entry, global unicast.
    best: tuple[int, bool] = (-1, True)
    for network, ok in table:
        length = int(network.split("/")[1])
        if length > best[0] and _in(value, bits, network):
            best = (length, ok)
    return best[1]


def _address(text: str) -> tuple[int, int] | str | None:
    """(value, 32 or 128) for an IP address, the text for a host name, None otherwise."""
    if _IPV4.fullmatch(text):
        return _v4_int(text), 32
    base, percent, zone = text.partition("%")
    if percent and not _ZONE.fullmatch(zone):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, base)
    except OSError:
        return None if percent else (text if _HOSTNAME.fullmatch(text) else None)
    return int.from_bytes(packed, "big"), 128


def decide(line: str) -> Decision:
    text = line.strip()
    text = text[2:] if text.startswith("a=") else text
    text = text[len("candidate:"):] if text.startswith("candidate:") else text
    if not text:
        return "end"
    m = _GRAMMAR.fullmatch(text)
    if m is None or not 1 <= int(m["priority"]) <= 2**31 - 1 or int(m["port"]) > 65535:
        return "invalid"
    address = _address(m["address"])
    if address is None:
        return "invalid"
    pairs = m["extensions"].split()
    for name, value in zip(pairs[::2], pairs[1::2], strict=True):
        if name == "rport" and not (re.fullmatch(r"[0-9]{1,5}", value)
                                    and int(value) <= 65535):
            return "invalid"
        if name == "raddr" and _address(value) is None:
            return "invalid"
    if int(m["component"]) not in (1, 2) or int(m["port"]) == 0:
        return "drop"
    if m["transport"].lower() not in ("udp", "tcp"):
        return "drop"
    if m["type"].lower() not in ("host", "srflx", "prflx", "relay"):
        return "drop"
    if isinstance(address, str):
        return "drop"  # a host name: mDNS or otherwise, the media server cannot use it
    value, bits = address
    if bits == 128 and value >> 32 == 0xFFFF:  # ::ffff:0:0/96, IPv4-mapped
        value, bits = value & 0xFFFFFFFF, 32
    return "keep" if _allowed(value, bits) else "drop"
