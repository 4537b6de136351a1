"""The ICE candidate filter and the early-candidate buffer."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from signaling.candidates import (
    BrowserCandidates,
    CandidateBuffer,
    CandidateFilter,
    CandidateInvalid,
    CandidatePolicy,
    normalize_candidate,
)
from signaling.errors import CODES, SignalingError
from tests.candidate_oracle import decide

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


def cand(address: str, *, component: str = "1", port: str = "5000", transport: str = "udp",
         typ: str = "host") -> str:
    return f"candidate:1 {component} {transport} 2122260223 {address} {port} typ {typ}"


@pytest.mark.parametrize(("line", "reason"), [
    (CHROMIUM_MDNS, "mdns"), (LINK_LOCAL, "link-local"), (LOOPBACK, "loopback"),
    (KMS_LINK_LOCAL, "link-local"), (cand("0.0.0.0"), "unspecified"),
    (cand("224.0.0.1"), "multicast"),
    # What outside testing got through (issue #20):
    (cand("::ffff:127.0.0.1"), "loopback"), (cand("::ffff:169.254.1.1"), "link-local"),
    (cand("169.254.169.254"), "link-local"), (cand("255.255.255.255"), "broadcast"),
    (cand("81.2.69.160", component="3"), "component"),
    (cand("81.2.69.160", component="0"), "component"), (cand("81.2.69.160", port="0"),
                                                         "port-zero"),
    (cand("0.1.2.3"), "this-network"), (cand("240.1.2.3"), "reserved"),
    (cand("::127.0.0.1"), "reserved"), (cand("::1"), "loopback"), (cand("ff02::1"), "multicast"),
    (cand("fe80::1%eth0"), "link-local"), (cand("81.2.69.160", transport="sctp"), "transport"),
    (cand("81.2.69.160", typ="weird"), "type"), (cand("turn.example.org"), "hostname"),
])
def test_unusable_candidates_are_dropped_with_a_reason(line: str, reason: str) -> None:
    """Each kind of address or field the media server must not use is dropped, counted."""
    f = CandidateFilter()
    verdict = f.judge(line)
    assert (verdict.keep, verdict.reason) == (False, reason)
    assert f.dropped[reason] == 1


@pytest.mark.parametrize("line", [HOST4, PRIVATE4, GLOBAL6, SRFLX, RELAY, TCP, "", "a=" + HOST4,
                                  cand("::ffff:81.2.69.160"), cand("::ffff:10.0.0.5")])
def test_usable_candidates_and_end_of_candidates_pass(line: str) -> None:
    """Public and private unicast candidates of every type pass, as does the empty one."""
    assert CandidateFilter().judge(line).keep


def test_the_forwarded_line_has_no_a_prefix_and_mapped_addresses_as_ipv4() -> None:
    """`a=candidate:…` is forwarded as `candidate:…`; ::ffff:a.b.c.d as a.b.c.d."""
    assert normalize_candidate("a=" + HOST4) == HOST4
    assert normalize_candidate("  " + HOST4 + "\r\n") == HOST4
    assert CandidateFilter().judge("a=" + HOST4).line == HOST4
    assert normalize_candidate(cand("::ffff:10.0.0.5")) == cand("10.0.0.5")
    assert normalize_candidate("") == "" and normalize_candidate("a=candidate:") == ""


@pytest.mark.parametrize("line", [
    "candidate:garbage", "garbage", cand("81.2.69.160", port="70000"),
    cand("81.2.69.160", port="+5"), cand("81.2.69.160", port="٣"),
    cand("81.2.69.160", component="1_0"), cand("1.2.3.4%eth0"), cand("<script>"),
    HOST4.replace(" typ ", " type "), HOST4 + " odd", HOST4.replace("2122260223", "0"),
    HOST4.replace("2122260223", str(2**31)), SRFLX.replace("rport 54401", "rport x"),
    SRFLX.replace("raddr 192.168.1.20", "raddr ::zz"), "candidate: " + HOST4[10:],
])
def test_unparsable_candidates_raise_candidate_invalid(line: str) -> None:
    """Lines that break RFC 8445's grammar raise the typed error a client sees."""
    with pytest.raises(CandidateInvalid) as info:
        CandidateFilter().judge(line)
    assert isinstance(info.value, SignalingError) and info.value.code == "candidate.invalid"
    assert info.value.code in CODES


def test_policy_options_drop_ipv6_private_ipv4_and_tcp() -> None:
    """The deployment's policy drops IPv6, private IPv4 (mapped too) and TCP on request."""
    f = CandidateFilter(CandidatePolicy(drop_ipv6=True, drop_private_ipv4=True, drop_tcp=True))
    assert f.judge(GLOBAL6).reason == "ipv6"
    assert f.judge(PRIVATE4).reason == "private-ipv4"
    assert f.judge(cand("::ffff:10.0.0.5")).reason == "private-ipv4"
    assert f.judge(TCP).reason == "tcp"
    assert f.judge(SRFLX).keep and f.judge(RELAY).keep


def test_candidate_lines_inside_sdp_are_filtered_and_the_rest_kept() -> None:
    """Bad and unparsable a=candidate lines leave the SDP; the others stay, normalized."""
    sdp = "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=" + HOST4,
                       "a=" + CHROMIUM_MDNS, "a=" + LINK_LOCAL, "a=candidate:junk",
                       "a=" + cand("::ffff:81.2.69.160"), "a=end-of-candidates", ""])
    out, reasons = CandidateFilter().filter_sdp(sdp)
    assert reasons == ["mdns", "link-local", "unparsable"]
    assert out == "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=" + HOST4,
                               "a=" + cand("81.2.69.160"), "a=end-of-candidates", ""])


def test_early_candidates_are_kept_in_order_per_target_and_capped_per_participant() -> None:
    """The cap counts every target a participant names, invented ones too; `take` frees."""
    buf = CandidateBuffer(limit=3)
    assert buf.add("a/publish", {"candidate": "1"}) and buf.add("a/publish", {"candidate": "2"})
    buf.add("a/invented", {"candidate": "x"})
    with pytest.raises(SignalingError) as info:
        buf.add("a/another-invented", {"candidate": "y"})
    assert info.value.code == "candidate.too_many" and info.value.code in CODES
    assert buf.add("b/publish", {"candidate": "other participant"})  # their own cap
    assert [c["candidate"] for c in buf.take("a/publish")] == ["1", "2"]
    assert buf.take("a/publish") == []
    assert buf.add("a/b", {"candidate": "room again"})
    buf.forget("a")
    assert buf.take("a/invented") == [] and buf.take("a/b") == [] and "a" not in buf.held
    assert buf.take("b/publish") == [{"candidate": "other participant"}]


@given(st.text(max_size=200))
def test_the_filter_decides_or_raises_candidate_invalid_on_arbitrary_text(text: str) -> None:
    """Any text is kept, dropped with a reason, or refused with candidate.invalid."""
    try:
        verdict = CandidateFilter().judge(text)
    except CandidateInvalid:
        return
    assert verdict.keep or verdict.reason


# Candidates of every shape: each field sometimes right, sometimes subtly wrong.
_IP4 = st.ip_addresses(v=4).map(str)
_IP6 = st.ip_addresses(v=6).map(str)
ADDRESSES = st.one_of(
    _IP4, _IP6, _IP4.map(lambda a: "::ffff:" + a), _IP4.map(lambda a: "::" + a),
    st.tuples(_IP6, st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True)).map("%".join),
    st.uuids().map(lambda u: f"{u}.local"),
    st.sampled_from(["example.org", "a.b", "1.2.3", "01.2.3.4", "256.1.1.1", "1.2.3.4%x",
                     "::zz", "fe80::1%", "<x>", "", "1:2:3:4:5:6:7:8:9", "LOCALHOST"]))
NUMBER = st.one_of(st.integers(0, 70000).map(str), st.integers(0, 2**32).map(str),
                   st.sampled_from(["+5", "-1", "٣", "1_0", "0x10", "00001", "", "1e3"]))
TOKEN = st.sampled_from(["udp", "UDP", "tcp", "TCP", "tls", "sctp", "u/dp", "ud\x00p", "é"])
TYPE = st.sampled_from(["host", "srflx", "prflx", "relay", "HOST", "relayed", "x", ""])
EXTENSION = st.one_of(
    st.tuples(st.just("raddr"), ADDRESSES), st.tuples(st.just("rport"), NUMBER),
    st.tuples(st.sampled_from(["generation", "ufrag", "network-id", "network-cost",
                               "tcptype"]),
              st.sampled_from(["0", "999", "x/y+", "active", "passive", "é", "\t"])))
CANDIDATE = st.builds(
    lambda prefix, foundation, component, transport, priority, address, port, typ, kind,
    extensions, odd, sep: prefix + sep.join(
        [foundation, component, transport, priority, address, port, typ, kind,
         *(part for pair in extensions for part in pair), *odd]),
    st.sampled_from(["", "candidate:", "a=candidate:", "a=", " candidate:", "candidate: "]),
    st.one_of(st.from_regex(r"[A-Za-z0-9+/]{1,32}", fullmatch=True),
              st.sampled_from(["", "x" * 33, "a-b", "a:b"])),
    st.one_of(st.sampled_from(["1", "2", "3", "0", "256"]), NUMBER), TOKEN,
    st.one_of(st.integers(1, 2**31 - 1).map(str), NUMBER), ADDRESSES,
    st.one_of(st.integers(1, 65535).map(str), NUMBER),
    st.sampled_from(["typ", "typ", "typ", "type", "TYP"]), TYPE,
    st.lists(EXTENSION, max_size=3), st.lists(st.sampled_from(["odd", "é"]), max_size=1),
    st.sampled_from([" ", " ", " ", "  ", "\t"]))


@settings(max_examples=int(os.environ.get("TELEMED_CANDIDATE_EXAMPLES", "1000")))
@given(CANDIDATE)
@example("a=candidate:1 1 udp 2122260223 ::ffff:127.0.0.1 54400 typ host")
@example("candidate:1 1 udp 2122260223 ::ffff:10.0.0.5 54400 typ host")
@example("candidate:1 3 udp 2122260223 81.2.69.160 54400 typ host")
def test_the_filter_agrees_with_an_oracle_written_from_the_rfcs(line: str) -> None:
    """Keep, drop or candidate.invalid: as RFC 8445's grammar and the IANA special-purpose
    registries decide (tests/candidate_oracle.py), for candidates of every shape."""
    expected = decide(line)
    try:
        verdict = CandidateFilter().judge(line)
    except CandidateInvalid:
        got = "invalid"
    else:
        got = "end" if verdict.keep and not verdict.line else (
            "keep" if verdict.keep else "drop")
        if verdict.keep and verdict.line:
            address = verdict.line.split(" ")[4]
            assert not address.lower().startswith("::ffff:") or ":" in address[7:]
            assert not verdict.line.startswith("a=")
            ipaddress.ip_address(address.split("%")[0])
    assert got == expected, line


def test_a_trickled_candidate_is_parsed_once_for_the_socket_and_the_filter(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Normalizing a line (the socket) then judging what came out (the call's filter)
    parses it once; the verdict is the same as a fresh parse's (a spy counts, nothing is
    faked)."""
    from signaling import candidates

    calls: list[str] = []
    real = candidates._parse

    def counted(text: str) -> Any:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(candidates, "_parse", counted)
    line = "a=candidate:77 1 udp 2122260223 ::ffff:10.1.2.3 50000 typ host"
    normalized = normalize_candidate(line)
    verdict = CandidateFilter().judge(normalized)
    assert len(calls) == 1
    assert (verdict.keep, verdict.line) == (
        True, "candidate:77 1 udp 2122260223 10.1.2.3 50000 typ host")
    dropped = CandidateFilter().judge(
        normalize_candidate("candidate:78 1 udp 2122260223 ::ffff:127.0.0.1 50000 typ host"))
    assert (dropped.keep, dropped.reason, len(calls)) == (False, "loopback", 2)


def test_an_offer_whose_candidates_were_all_dropped_has_none_usable() -> None:
    """Complete candidates (SDP end-of-candidates) with none left after the filter count as
    none usable; one passing candidate, or candidates still to come, do not."""
    f = CandidateFilter()
    offer = "\r\n".join(["v=0", "a=" + LOOPBACK, "a=" + CHROMIUM_MDNS, "a=end-of-candidates", ""])
    filtered, reasons = f.filter_sdp(offer)
    assert sorted(reasons) == ["loopback", "mdns"]
    f.browser.offered(("pat-1", "publish"), filtered)
    assert f.browser.none_usable(("pat-1", "publish"))
    assert not f.browser.none_usable(("pat-1", "doc-1"))  # another endpoint: nothing known
    usable = "\r\n".join(["v=0", "a=" + HOST4, "a=end-of-candidates", ""])
    f.browser.offered(("doc-1", "publish"), f.filter_sdp(usable)[0])
    assert not f.browser.none_usable(("doc-1", "publish"))
    still_coming = "\r\n".join(["v=0", "a=" + LOOPBACK, ""])
    f.browser.offered(("doc-1", "pat-1"), f.filter_sdp(still_coming)[0])
    assert not f.browser.none_usable(("doc-1", "doc-1"))
    assert not f.browser.none_usable(("doc-1", "pat-1"))


def test_trickled_candidates_count_towards_none_usable_and_a_leaver_is_forgotten() -> None:
    """A browser that trickles only dropped candidates and then an empty one (its end) has
    none usable; a passing trickled candidate makes it usable; leaving forgets both ends."""
    f = CandidateFilter()
    key = ("pat-1", "publish")
    assert not f.judge(LOOPBACK).keep  # dropped: the tally never hears of it
    f.browser.trickled(key, f.judge("").line)
    assert f.browser.none_usable(key)
    f.browser.trickled(("pat-1", "doc-1"), f.judge(RELAY).line)
    assert not f.browser.none_usable(("pat-1", "doc-1"))  # one passed, and not complete yet
    f.browser.trickled(("pat-1", "doc-1"), "")
    assert not f.browser.none_usable(("pat-1", "doc-1"))
    f.browser.trickled(("doc-1", "pat-1"), "")
    f.browser.failed.add(("doc-1", "pat-1"))
    f.browser.forget("pat-1")
    assert f.browser == BrowserCandidates()


def test_a_browser_reported_ice_failure_holds_until_the_endpoint_is_offered_again() -> None:
    """`failed` (the browser's own report) makes `ice_failed` true with usable candidates;
    a new offer for that endpoint (an ICE restart) clears it."""
    f = CandidateFilter()
    key = ("pat-1", "publish")
    usable = "\r\n".join(["v=0", "a=" + HOST4, "a=end-of-candidates", ""])
    f.browser.offered(key, f.filter_sdp(usable)[0])
    assert not f.browser.ice_failed(key)
    f.browser.failed.add(key)
    assert f.browser.ice_failed(key) and not f.browser.none_usable(key)
    f.browser.offered(key, f.filter_sdp(usable)[0])
    assert not f.browser.ice_failed(key)
