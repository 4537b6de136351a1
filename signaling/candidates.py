"""ICE candidate filtering and early-candidate buffering.

Browsers' mDNS host candidates (`<uuid>.local`) and IPv6 link-local addresses break
Kurento; loopback, unspecified and multicast addresses are never useful. They are dropped
from trickled candidates and from `a=candidate` lines inside SDP, both ways. Parsing uses
aioice's candidate grammar and `ipaddress`, not a hand-written one.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aioice.candidate import Candidate as IceCandidate

__all__ = ["CandidateBuffer", "CandidateFilter", "CandidatePolicy", "Verdict"]


@dataclass(frozen=True, kw_only=True)
class CandidatePolicy:
    drop_ipv6: bool = False
    drop_private_ipv4: bool = False
    drop_tcp: bool = False


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str = ""  # why it was dropped: mdns, link-local, loopback, ...


@dataclass
class CandidateFilter:
    policy: CandidatePolicy = field(default_factory=CandidatePolicy)
    dropped: Counter[str] = field(default_factory=Counter)

    def judge(self, line: str) -> Verdict:
        """Whether a candidate line (with or without `candidate:` / `a=`) may pass."""
        text = line.strip()
        if text.startswith("a="):
            text = text[2:]
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        if not text:
            return Verdict(True)  # end-of-candidates
        try:
            cand = IceCandidate.from_sdp(text)
        except (ValueError, IndexError):
            return self._drop("unparsable")
        host = cand.host
        if host.lower().endswith(".local"):
            return self._drop("mdns")
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return self._drop("hostname")
        if ip.version == 6 and ip.is_link_local:
            return self._drop("link-local")
        if ip.is_loopback:
            return self._drop("loopback")
        if ip.is_unspecified:
            return self._drop("unspecified")
        if ip.is_multicast:
            return self._drop("multicast")
        if ip.version == 6 and self.policy.drop_ipv6:
            return self._drop("ipv6")
        if ip.version == 4 and ip.is_private and self.policy.drop_private_ipv4:
            return self._drop("private-ipv4")
        if cand.transport.lower() == "tcp" and self.policy.drop_tcp:
            return self._drop("tcp")
        return Verdict(True)

    def _drop(self, reason: str) -> Verdict:
        self.dropped[reason] += 1
        return Verdict(False, reason)

    def filter_sdp(self, sdp: str) -> tuple[str, list[str]]:
        """The SDP without dropped `a=candidate` lines, and the reasons for each drop."""
        kept: list[str] = []
        reasons: list[str] = []
        newline = "\r\n" if "\r\n" in sdp else "\n"
        for line in sdp.split(newline):
            if line.startswith("a=candidate:"):
                verdict = self.judge(line)
                if not verdict.keep:
                    reasons.append(verdict.reason)
                    continue
            kept.append(line)
        return newline.join(kept), reasons


@dataclass
class CandidateBuffer:
    """Candidates that arrived before their endpoint existed, kept in order per target."""

    limit: int = 100
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, target: str, candidate: dict[str, Any]) -> bool:
        queue = self.pending.setdefault(target, [])
        if len(queue) >= self.limit:
            return False
        queue.append(candidate)
        return True

    def take(self, target: str) -> list[dict[str, Any]]:
        return self.pending.pop(target, [])
