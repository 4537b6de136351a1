"""Invalid offers through the real socket and the embedded media server: every one that
aiortc's parser or the media layer cannot take is answered `sdp.invalid`, never
`internal`, and the same connection can publish after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.errors import MediaError
from signaling.sdp import offer_kinds
from tests.hub_fixtures import CallClient, ProtocolError, Service
from tests.live_call import embedded_service, other_call
from tests.services import RedisServer

GOOD = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n"
        "a=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 nack\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=ice-ufrag:abcd\r\n"
        "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        "a=fingerprint:sha-256 " + ":".join(["AA"] * 32) + "\r\na=setup:actpass\r\n")

#: Each truncation makes aiortc's parser raise something other than ValueError.
BROKEN = {
    "AssertionError": GOOD.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=audio"),
    "StopIteration": GOOD.replace("a=rtpmap:111 opus/48000/2", "a=rtpm\r\na=fmtp:111 x=1"),
    "KeyError": GOOD.replace("a=setup:actpass", "a=setup:"),
    "IndexError": GOOD.replace("a=rtcp-fb:111 nack", "a=rtcp-fb:111"),
    "AttributeError": GOOD.replace("a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
                                   "a=extmap"),
}
#: These parse, so only the media layer can refuse them.
MEDIA_LAYER = {
    "no ICE credentials": GOOD.replace("a=ice-ufrag:abcd\r\n", "").replace(
        "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", ""),
    "no DTLS fingerprint": GOOD.replace("a=fingerprint:sha-256 " + ":".join(["AA"] * 32)
                                        + "\r\n", ""),
}


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with embedded_service(tmp_path, redis_server.url) as svc:
        yield svc


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_every_way_the_parser_fails_is_sdp_invalid(kind: str) -> None:
    """AssertionError, StopIteration, KeyError… from aiortc's parser become sdp.invalid."""
    with pytest.raises(MediaError) as info:
        offer_kinds(BROKEN[kind])
    assert info.value.code == "sdp.invalid" and kind in info.value.message
    assert offer_kinds(GOOD) == frozenset({"audio"})


async def publish_errors(client: CallClient, offers: dict[str, str]) -> dict[str, str]:
    """The error code each offer's `publish` gets (or what it was answered instead)."""
    codes: dict[str, str] = {}
    for name, sdp in offers.items():
        try:
            reply = await client.request("publish", sdp=sdp)
            codes[name] = f"answered {reply['type']}"
        except ProtocolError as exc:
            codes[name] = str(exc.code)
    return codes


async def test_offers_the_parser_refuses_are_sdp_invalid_and_publishing_works_after(
    service: Service
) -> None:
    """Through the socket: each parser failure gets sdp.invalid, never internal; a good
    offer on the same connection then works."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        assert await publish_errors(client, BROKEN) == dict.fromkeys(BROKEN, "sdp.invalid")
        await client.publish()
        assert call.participants["pat-9"].published == {"audio", "video"}
    finally:
        await client.close()


@pytest.mark.parametrize("name", sorted(MEDIA_LAYER))
async def test_offers_only_the_media_layer_refuses_are_sdp_invalid(
    service: Service, name: str
) -> None:
    """Offers that parse but that the embedded media server cannot take (no ICE
    credentials, no DTLS fingerprint) get sdp.invalid too."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        assert await publish_errors(client, {name: MEDIA_LAYER[name]}) == {
            name: "sdp.invalid"}
    finally:
        await client.close()


async def test_after_a_media_layer_refusal_the_participant_can_publish(
    service: Service
) -> None:
    """A refused offer leaves nothing behind: the next good offer is taken."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        name = "no DTLS fingerprint"
        assert await publish_errors(client, {name: MEDIA_LAYER[name]}) == {
            name: "sdp.invalid"}
        await client.publish()
        assert call.participants["pat-9"].published == {"audio", "video"}
    finally:
        await client.close()
