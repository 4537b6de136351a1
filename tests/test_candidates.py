"""The ICE candidate filter and the early-candidate buffer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signaling.candidates import CandidateBuffer, CandidateFilter, CandidatePolicy

CHROMIUM_MDNS = ("candidate:1840965416 1 udp 2113937151 8c3b1a2e-4e2f-4b0a-9d1c-2f3e4a5b6c7d"
                 ".local 54400 typ host generation 0 ufrag x network-cost 999")
HOST4 = "candidate:1 1 udp 2122260223 81.2.69.160 54400 typ host generation 0"
PRIVATE4 = "candidate:2 1 udp 2122260223 192.168.1.20 54401 typ host"
LINK_LOCAL = "candidate:3 1 udp 2122262783 fe80::1c2b:3dff:fe4a:5b6c 54402 typ host"
GLOBAL6 = "candidate:4 1 udp 2122262783 2001:db8::5 54403 typ host"
SRFLX = ("candidate:5 1 udp 1686052607 5.45.1.2 54404 typ srflx raddr 192.168.1.20 "
         "rport 54401")
RELAY = "candidate:6 1 udp 41885439 77.88.8.8 50000 typ relay raddr 5.45.1.2 rport 54404"
TCP = "candidate:7 1 tcp 1518280447 81.2.69.160 9 typ host tcptype active"
LOOPBACK = "candidate:8 1 udp 2122260223 127.0.0.1 54405 typ host"
KMS_LINK_LOCAL = ("candidate:3 2 TCP 1015022846 fe80::a00:27ff:fe85:a163 57914 typ host "
                  "tcptype passive")


@pytest.mark.parametrize(("line", "reason"), [
    (CHROMIUM_MDNS, "mdns"), (LINK_LOCAL, "link-local"), (LOOPBACK, "loopback"),
    (KMS_LINK_LOCAL, "link-local"), ("candidate:x 1 udp 1 0.0.0.0 9 typ host", "unspecified"),
    ("candidate:x 1 udp 1 224.0.0.1 9 typ host", "multicast"), ("candidate:garbage", "unparsable"),
])
def test_unusable_candidates_are_dropped_with_a_reason(line: str, reason: str) -> None:
    f = CandidateFilter()
    verdict = f.judge(line)
    assert not verdict.keep and verdict.reason == reason
    assert f.dropped[reason] == 1


@pytest.mark.parametrize("line", [HOST4, PRIVATE4, GLOBAL6, SRFLX, RELAY, TCP, "", "a=" + HOST4])
def test_usable_candidates_and_end_of_candidates_pass(line: str) -> None:
    assert CandidateFilter().judge(line).keep


def test_policy_options_drop_ipv6_private_ipv4_and_tcp() -> None:
    f = CandidateFilter(CandidatePolicy(drop_ipv6=True, drop_private_ipv4=True, drop_tcp=True))
    assert f.judge(GLOBAL6).reason == "ipv6"
    assert f.judge(PRIVATE4).reason == "private-ipv4"
    assert f.judge(TCP).reason == "tcp"
    assert f.judge(SRFLX).keep and f.judge(RELAY).keep


def test_candidate_lines_inside_sdp_are_filtered_and_the_rest_kept() -> None:
    sdp = "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=" + HOST4[len(""):],
                       "a=" + CHROMIUM_MDNS, "a=" + LINK_LOCAL, "a=end-of-candidates", ""])
    out, reasons = CandidateFilter().filter_sdp(sdp)
    assert reasons == ["mdns", "link-local"]
    assert out == "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=" + HOST4,
                               "a=end-of-candidates", ""])


def test_early_candidates_are_kept_in_order_per_target_and_bounded() -> None:
    buf = CandidateBuffer(limit=2)
    assert buf.add("a/publish", {"candidate": "1"}) and buf.add("a/publish", {"candidate": "2"})
    assert not buf.add("a/publish", {"candidate": "3"})
    buf.add("a/b", {"candidate": "x"})
    assert [c["candidate"] for c in buf.take("a/publish")] == ["1", "2"]
    assert buf.take("a/publish") == []
    assert buf.take("a/b") == [{"candidate": "x"}]


@given(st.text(max_size=200))
def test_the_filter_never_raises_on_arbitrary_text(text: str) -> None:
    verdict = CandidateFilter().judge(text)
    assert verdict.keep or verdict.reason
