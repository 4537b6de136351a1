"""ICE candidate filtering and early-candidate buffering.

A candidate names an address the media server will send connectivity checks to, so a
client must not be able to point it at the server's own host: loopback, link-local
(169.254/16, fe80::/10), the IPv4 inside `::ffff:a.b.c.d`, and the addresses that are no
peer at all (unspecified, "this network" 0/8, multicast, 240/4 and the limited broadcast,
the rest of ::/8) are dropped. Browsers' mDNS host names (`<uuid>.local`) break Kurento and
go too, as do components other than RTP (1) and RTCP (2), port 0, transports other than UDP
and TCP, and unknown candidate types. The same filter runs on trickled candidates, on
`a=candidate` lines inside SDP and on the media server's own candidates.

A line that breaks the grammar of RFC 8445 §5.1 / RFC 5245 §15.1 raises `CandidateInvalid`
(`candidate.invalid`), so the sender learns of it. aioice's parser is not used: it accepts
what `int()` does ("+5", "٣", "1_0"), never checks `typ` and takes any port or priority.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from signaling.errors import MediaError, ResourceError

__all__ = [
    "EARLY_CANDIDATES",
    "BrowserCandidates",
    "CandidateBuffer",
    "CandidateFilter",
    "CandidateInvalid",
    "CandidatePolicy",
    "Verdict",
    "normalize_candidate",
]

#: Early candidates (before their endpoint exists) kept per participant, over all targets.
EARLY_CANDIDATES = 256

_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`{|}~A-Za-z0-9]+")  # RFC 4566 token-char
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # extension names and values: printable ASCII
_FQDN = re.compile(r"[A-Za-z0-9.\-]{4,255}")  # RFC 4566: 4*(alpha-numeric / "-" / ".")
_TYPES = frozenset({"host", "srflx", "prflx", "relay"})
_TRANSPORTS = frozenset({"udp", "tcp"})
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_RESERVED6 = ipaddress.ip_network("::/8")
#: Inside ::/8 but routable: NAT64 prefixes (RFC 6052, RFC 8215); the translator is elsewhere.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LINK_LOCAL4 = ipaddress.ip_network("169.254.0.0/16")
_RESERVED4 = ipaddress.ip_network("240.0.0.0/4")  # 255.255.255.255 included
_BROADCAST = ipaddress.ip_address("255.255.255.255")


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address | str
#: Lines normalized lately, by what was given and by what came out: a trickled candidate
#: is normalized by the socket and judged by the call's filter, one parse for both.
_SEEN: dict[str, tuple[str, _Parsed | None]] = {}
_SEEN_MAX = 4096


class CandidateInvalid(MediaError):
    """The candidate line breaks the ICE grammar: the sender gets `candidate.invalid`."""

    code = "candidate.invalid"


@dataclass(frozen=True, kw_only=True)
class CandidatePolicy:
    drop_ipv6: bool = False
    drop_private_ipv4: bool = False
    drop_tcp: bool = False


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str = ""  # why it was dropped: mdns, link-local, loopback, ...
    #: The line as forwarded: `candidate:` + its fields, one space apart, without `a=`,
    #: an IPv4-mapped address written as the IPv4 it is; "" for end-of-candidates.
    line: str = ""


@dataclass(frozen=True)
class _Parsed:
    fields: list[str]
    component: int
    transport: str
    host: str
    port: int
    type: str
    #: The address, parsed once (an IPv4-mapped one as its IPv4), or the host name.
    ip: _Address


def _number(text: str, what: str, digits: int, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= digits
            and low <= int(text) <= high):
        raise CandidateInvalid(f"candidate: {what} {text[:20]!r} is not a number in "
                               f"{low}..{high}")
    return int(text)


def _parse(text: str) -> _Parsed:
    fields = [f for f in text.split(" ") if f]
    if text.startswith(" ") or len(fields) < 8 or fields[6] != "typ" or len(fields) % 2:
        raise CandidateInvalid("candidate: expected `foundation component transport "
                               "priority address port typ type` and name/value pairs")
    if not _FOUNDATION.fullmatch(fields[0]):
        raise CandidateInvalid("candidate: bad foundation")
    if not (_TOKEN.fullmatch(fields[2]) and _TOKEN.fullmatch(fields[7])):
        raise CandidateInvalid("candidate: bad transport or type")
    component = _number(fields[1], "component", 5, 0, 99999)
    _number(fields[3], "priority", 10, 1, 2**31 - 1)
    port = _number(fields[5], "port", 5, 0, 65535)
    ip = _address(fields[4])
    if ip is None:
        raise CandidateInvalid(f"candidate: bad address {fields[4][:40]!r}")
    for name, value in zip(fields[8::2], fields[9::2], strict=True):
        if not (_VISIBLE.fullmatch(name) and _VISIBLE.fullmatch(value)):
            raise CandidateInvalid("candidate: bad extension")
        if name == "rport":
            _number(value, "rport", 5, 0, 65535)
        elif name == "raddr" and _address(value) is None:
            raise CandidateInvalid("candidate: bad raddr")
    return _Parsed(fields, component, fields[2].lower(), fields[4], port, fields[7].lower(), ip)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> _Address | None:
    """An IP address (an IPv6 one perhaps with a %zone, which is dropped) or a host name,
    as SDP allows; None for anything else. Cached: a browser's candidates come from few
    addresses, and parsing one with `ipaddress` costs more than the rest of the line."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text if _FQDN.fullmatch(text) else None
    return ipaddress.IPv6Address(int(ip)) if ip.version == 6 else ip


def _strip(line: str) -> str:
    text = line.strip()
    text = text.removeprefix("a=")
    return text.removeprefix("candidate:")


def normalize_candidate(line: str) -> str:
    """The candidate as forwarded (see `Verdict.line`); raises `CandidateInvalid`."""
    return _normalize(line)[0]


def _normalize(line: str) -> tuple[str, _Parsed | None]:
    if (seen := _SEEN.get(line)) is not None:
        return seen
    text = _strip(line)
    if not text:
        return "", None
    parsed = _parse(text)
    ip = parsed.ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Judged, and reached, as the IPv4 address it is.
        parsed.fields[4] = str(ip.ipv4_mapped)
        parsed = dataclasses.replace(parsed, ip=ip.ipv4_mapped)
    result = "candidate:" + " ".join(parsed.fields), parsed
    while len(_SEEN) >= _SEEN_MAX:
        del _SEEN[next(iter(_SEEN))]  # the oldest: dicts keep insertion order
    _SEEN[line] = _SEEN[result[0]] = result
    return result


@functools.lru_cache(maxsize=4096)
def _judge_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, bool]:
    """Why an address is no peer ("" if it is one), and whether it is a private IPv4 one.
    Cached: a browser trickles many candidates from few addresses, and `ipaddress`'s
    checks were a good part of the hub's time per candidate (bench.signalling)."""
    if ip.version == 6:
        if ip.is_loopback:
            return "loopback", False
        if ip.is_unspecified:
            return "unspecified", False
        if ip in _RESERVED6 and not any(ip in net for net in _NAT64):
            # IPv4-compatible and -translated forms among them
            return "reserved", False
        if ip.is_link_local:
            return "link-local", False
        if ip.is_multicast:
            return "multicast", False
        return "", False
    if ip.is_loopback:
        return "loopback", False
    if ip == ipaddress.IPv4Address(0):
        return "unspecified", False
    if ip in _THIS_NETWORK:
        return "this-network", False
    if ip in _LINK_LOCAL4:
        return "link-local", False
    if ip.is_multicast:
        return "multicast", False
    if ip == _BROADCAST:
        return "broadcast", False
    if ip in _RESERVED4:
        return "reserved", False
    return "", ip.is_private


#: An endpoint, as (participant, target): `publish` or the participant it receives.
EndpointKey = tuple[str, str]


@dataclass
class BrowserCandidates:
    """What each endpoint got of its browser's candidates: how many passed the filter, and
    whether the browser said it has no more (`a=end-of-candidates`, or an empty trickled
    candidate).

    Once a browser's candidates are complete and none passed, the endpoint has nothing to
    check: its ICE has failed, although Kurento stays in GATHERING for ever (it leaves
    that state only on a remote candidate) and the embedded media server may never start
    its checks. The watchdog names such an endpoint's ICE `FAILED`, as it does when the
    browser reports that its own ICE failed."""

    passed: Counter[EndpointKey] = field(default_factory=Counter)
    ended: set[EndpointKey] = field(default_factory=set)
    #: The browser said its own ICE failed (`clientEvent pcFailed`, `iceConnectionState`).
    failed: set[EndpointKey] = field(default_factory=set)

    def offered(self, key: EndpointKey, filtered_sdp: str) -> None:
        """An offer's SDP as it went to the media server."""
        self.failed.discard(key)  # a new negotiation (an ICE restart) starts afresh
        lines = filtered_sdp.splitlines()
        self.passed[key] += sum(line.startswith("a=candidate:") for line in lines)
        if "a=end-of-candidates" in (line.strip() for line in lines):
            self.ended.add(key)

    def trickled(self, key: EndpointKey, line: str) -> None:
        """A trickled candidate that passed the filter ("" for end-of-candidates)."""
        if line:
            self.passed[key] += 1
        else:
            self.ended.add(key)

    def none_usable(self, key: EndpointKey) -> bool:
        """The browser's candidates are complete and not one of them passed."""
        return key in self.ended and self.passed[key] == 0

    def ice_failed(self, key: EndpointKey) -> bool:
        """Nothing left to check, or the browser's end of this ICE session gave up."""
        return self.none_usable(key) or key in self.failed

    def forget(self, participant: str) -> None:
        """A participant who left: its endpoints, and the others' receiving it, are gone."""
        for key in [k for k in (*self.passed, *self.ended, *self.failed) if participant in k]:
            self.passed.pop(key, None)
            self.ended.discard(key)
            self.failed.discard(key)


@dataclass
class CandidateFilter:
    policy: CandidatePolicy = field(default_factory=CandidatePolicy)
    dropped: Counter[str] = field(default_factory=Counter)
    #: The browser's side of each endpoint's candidates, for the watchdog's detail.
    browser: BrowserCandidates = field(default_factory=BrowserCandidates)

    def judge(self, line: str) -> Verdict:
        """Whether a candidate line (with or without `candidate:` / `a=`) may pass.

        Raises `CandidateInvalid` when the line cannot be parsed; a caller answering a
        client lets it through as the reply, one filtering SDP drops the line."""
        normalized, parsed = _normalize(line)
        if parsed is None:
            return Verdict(True)  # end-of-candidates
        reason = self._reason(parsed)
        if reason:
            self.dropped[reason] += 1
            return Verdict(False, reason, normalized)
        return Verdict(True, "", normalized)

    def _reason(self, cand: _Parsed) -> str:
        if cand.component not in (1, 2):
            return "component"
        if cand.port == 0:
            return "port-zero"
        if cand.transport not in _TRANSPORTS:
            return "transport"
        if cand.type not in _TYPES:
            return "type"
        ip = cand.ip
        if isinstance(ip, str):
            return "mdns" if ip.lower().endswith(".local") else "hostname"
        reason, private = _judge_address(ip)
        if reason:
            return reason
        if ip.version == 6 and self.policy.drop_ipv6:
            return "ipv6"
        if private and self.policy.drop_private_ipv4:
            return "private-ipv4"
        if cand.transport == "tcp" and self.policy.drop_tcp:
            return "tcp"
        return ""

    def filter_sdp(self, sdp: str) -> tuple[str, list[str]]:
        """The SDP without dropped `a=candidate` lines, and the reasons for each drop.

        Unparsable lines are dropped too (reason `unparsable`): the offer as a whole may
        still be good, and the media server's own parser may be stricter than ours."""
        kept: list[str] = []
        reasons: list[str] = []
        newline = "\r\n" if "\r\n" in sdp else "\n"
        for line in sdp.split(newline):
            if line.startswith("a=candidate:"):
                try:
                    verdict = self.judge(line)
                except CandidateInvalid:
                    self.dropped["unparsable"] += 1
                    verdict = Verdict(False, "unparsable")
                if not verdict.keep:
                    reasons.append(verdict.reason)
                    continue
                line = "a=" + verdict.line
            kept.append(line)
        return newline.join(kept), reasons


class TooManyCandidates(ResourceError):
    code = "candidate.too_many"


@dataclass
class CandidateBuffer:
    """Candidates that arrived before their endpoint existed, kept in order per target.

    Targets are `<participant>/<target>` (participant ids hold no `/`). A client may name
    any target, so the cap is per participant over all its targets: beyond it, `add`
    raises `candidate.too_many` and keeps nothing more until `take` or `forget`."""

    limit: int = EARLY_CANDIDATES
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    held: Counter[str] = field(default_factory=Counter)

    def add(self, target: str, candidate: dict[str, Any]) -> bool:
        owner = target.split("/", 1)[0]
        if self.held[owner] >= self.limit:
            raise TooManyCandidates(f"more than {self.limit} candidates before their "
                                    "publish/subscribe: send the offer first")
        self.pending.setdefault(target, []).append(candidate)
        self.held[owner] += 1
        return True

    def take(self, target: str) -> list[dict[str, Any]]:
        queue = self.pending.pop(target, [])
        owner = target.split("/", 1)[0]
        self.held[owner] -= len(queue)
        if self.held[owner] <= 0:
            del self.held[owner]
        return queue

    def forget(self, participant: str) -> None:
        """Everything a participant left behind (it left, or its socket dropped)."""
        for target in [t for t in self.pending if t.split("/", 1)[0] == participant]:
            del self.pending[target]
        self.held.pop(participant, None)
