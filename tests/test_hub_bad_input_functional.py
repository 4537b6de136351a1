"""Bad input on a live hub: each gets its error code, and the call next to it goes on.

A consultation runs between two aiortc participants for the whole test while another
connection sends forged tokens, garbage, floods and invalid SDP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.call import Call, CallKind
from signaling.errors import CODES
from signaling.protocol import MESSAGES, SUBPROTOCOL
from tests.helpers import scaled
from tests.hub_fixtures import CallClient, ProtocolError, Service
from tests.live_call import LiveCall, embedded_service, live_call, other_call
from tests.services import RedisServer


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with embedded_service(tmp_path, redis_server.url) as svc:
        yield svc


@pytest.fixture
async def live(service: Service) -> AsyncIterator[LiveCall]:
    async with live_call(service) as call:
        yield call


async def hello_error(service: Service, token: str) -> str:
    client = CallClient(service, token)
    try:
        await client.connect()
        with pytest.raises(ProtocolError) as info:
            await client.hello()
        assert (await client.request("ping"))["type"] == "pong"  # the socket stays usable
        return str(info.value.code)
    finally:
        await client.close()


async def test_bad_tokens_get_their_codes_and_no_token_is_logged(
    service: Service, live: LiveCall, caplog: pytest.LogCaptureFixture
) -> None:
    """Each bad join token is refused with its own code and logged without its secret."""
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []
    target = other_call(service)
    good = {"call_id": target.id, "subject": "pat-9"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"key": "forged-" + "k" * 30}, "auth.invalid"),
        ({"ttl": -10}, "auth.expired"),
        ({"audience": "someone-else"}, "auth.audience"),
        ({"issuer": "stranger"}, "auth.invalid"),
        ({"call_id": "no-such-call"}, "call.not_found"),
        ({"subject": "doc-1"}, "call.not_yours"),  # a real participant, of another call
    ]
    for change, code in cases:
        args = {**good, **change}
        token = service.token(args.pop("call_id"), args.pop("subject"), **args)
        tokens.append(token)
        assert await hello_error(service, token) == code, change
    assert await hello_error(service, "not.a.jwt") == "auth.invalid"
    # A token that opens the live call cannot be used to act in another one.
    intruder = CallClient(service, service.token(target.id, "pat-9"))
    try:
        await intruder.connect()
        await intruder.join()
        with pytest.raises(ProtocolError) as info:
            await intruder.request("subscribe", participant="doc-1", sdp="v=0")
        assert info.value.code in ("participant.not_found", "sdp.invalid")
        with pytest.raises(ProtocolError) as info:
            await intruder.request("subscribe", participant="doc-1", sdp=_recv_offer())
        assert info.value.code == "participant.not_found"
    finally:
        await intruder.close()
    tokens.append(intruder.token)
    logged = caplog.text
    assert "auth.invalid" in logged or "auth.expired" in logged  # the refusals were logged
    assert [t for t in tokens if t.rsplit(".", 1)[1] in logged] == []  # their secrets not
    await live.still_fine()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_tokens_signed_with_the_mis_private_key_open_one_call_only(
    service: Service, live: LiveCall, alg: str
) -> None:
    """A join token signed with the MIS's RSA/EC key opens its call only; another key's does not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from signaling.session import SESSION_CONFIG
    from signaling.tokens import mint_join_token

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) \
        if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    service.app[SESSION_CONFIG].jwt_keys.append(private.public_key())
    first, second = other_call(service), other_call(service)

    def token(call: Call, key: bytes | str = pem, algorithm: str = alg) -> str:
        return mint_join_token(key=key, algorithm=algorithm,
                               issuer=service.settings.auth.jwt_issuer,
                               audience=service.settings.auth.jwt_audience, subject="pat-9",
                               name="P", role="patient", call_id=call.id)

    client = CallClient(service, token(first))
    try:
        await client.connect()
        welcome = await client.hello()
        assert (welcome["participant"], welcome["call"]) == ("pat-9", first.id)
        with pytest.raises(ProtocolError) as info:  # the same person, another call
            await client.request("hello", token=token(second))
        assert info.value.code == "auth.wrong_call"
        assert (await client.request("join"))["call"]["id"] == first.id
    finally:
        await client.close()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048) \
        if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    forged = other.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    assert await hello_error(service, token(second, key=forged)) == "auth.invalid"
    await live.still_fine()


async def test_calls_larger_than_their_kind_allows_are_refused(service: Service) -> None:
    """A call with more people than its kind allows is refused `call.full`."""
    from signaling.errors import CallError

    doctors = [(f"d{i}", f"D{i}", "doctor") for i in range(9)]
    assert service.hub.create_call(CallKind.CONFERENCE, doctors[:8]).max_participants == 8
    for kind, people in ((CallKind.CONFERENCE, doctors), (CallKind.CONSULTATION, doctors[:3]),
                         (CallKind.REFERRAL, doctors[:3])):
        with pytest.raises(CallError) as info:
            service.hub.create_call(kind, people)
        assert info.value.code == "call.full"


async def test_only_allowed_origins_may_open_a_call_socket(service: Service) -> None:
    """Only the page's own origin (scheme, host and port) may open a call socket; others get 403."""
    async with aiohttp.ClientSession() as http:
        port = service.url.rsplit(":", 1)[1]
        for headers in ({"Origin": "http://evil.example"}, {},
                        {"Origin": f"http://127.0.0.1:{int(port) + 1}"},  # another port
                        {"Origin": f"https://127.0.0.1:{port}"}):  # another scheme
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(service.ws_url, protocols=[SUBPROTOCOL], headers=headers)
            assert info.value.status == 403, headers
        async with http.get(service.ws_url, headers={"Origin": "http://evil.example"}) as r:
            assert (r.status, (await r.json())["code"]) == (403, "origin.forbidden")
        ws = await raw_socket(service, http)  # the page's own origin
        assert (await reply(ws, '{"type": "ping", "id": 1}'))["type"] == "pong"
        await ws.close()


async def test_a_peer_that_stops_answering_pings_is_dropped_and_its_place_held(
    service: Service
) -> None:
    """A socket that stops answering pings is dropped within the heartbeat; its place is held."""
    from signaling.participant import ParticipantState
    from signaling.session import SESSION_CONFIG

    heartbeat = 0.5
    service.app[SESSION_CONFIG].heartbeat = heartbeat
    call = other_call(service)
    doctor = CallClient(service, service.token(call.id, "doc-9", role="doctor"))
    patient = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await doctor.connect()
        await doctor.join()
        await patient.connect(autoping=False)  # its network vanished: no pong ever comes
        await patient.join()
        loop = asyncio.get_running_loop()
        joined = loop.time()
        reconnecting = await doctor.wait_event("participantReconnecting", timeout=10)
        assert reconnecting["participant"] == "pat-9"
        # aiohttp pings every `heartbeat` s and gives up after half of it without a pong.
        assert heartbeat <= loop.time() - joined < heartbeat * 1.5 + scaled(2)
        assert call.participants["pat-9"].state is ParticipantState.RECONNECTING
        assert "pat-9" not in service.hub.sessions[call.id].connected()
        assert (await doctor.request("ping"))["type"] == "pong"  # the live side is fine
    finally:
        await asyncio.gather(doctor.close(), patient.close())


def _recv_offer() -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n"
            "a=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=ice-ufrag:abcd\r\n"
            "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
            "a=fingerprint:sha-256 " + ":".join(["AA"] * 32) + "\r\na=setup:actpass\r\n")


async def test_the_call_socket_declines_compression_a_browser_offers(service: Service) -> None:
    """Idle sockets are the hub's memory bill: zlib state per socket is not worth paying
    for small JSON messages (see docs/benchmarks.md, idle capacity)."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(service.ws_url, protocols=[SUBPROTOCOL], compress=15,
                                   headers={"Origin": service.url})
        try:
            assert ws.compress == 0
            assert "Sec-WebSocket-Extensions" not in ws._response.headers
            assert (await reply(ws, '{"type": "ping", "id": 1}'))["type"] == "pong"
        finally:
            await ws.close()


async def test_pre_call_diagnostics_land_on_the_timeline_before_join(service: Service) -> None:
    """Client diagnostics sent before join land on the timeline; without hello they are refused."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.hello()
        await client.request("clientEvent", event="mediaError",
                             data={"name": "NotReadableError", "message": "camera busy"})
        # Only a joined participant's reports count for the watchdog.
        await client.request("clientEvent", event="mediaReceived", data={"participant": "x"})
    finally:
        await client.close()
    seen = [e for e in call.timeline.as_list() if e["event"].startswith("client.")]
    assert [(e["event"], e["participant"], e["joined"]) for e in seen] == [
        ("client.mediaError", "pat-9", False), ("client.mediaReceived", "pat-9", False)]
    assert seen[0]["data"]["name"] == "NotReadableError"
    async with aiohttp.ClientSession() as http:
        ws = await raw_socket(service, http)  # no hello: nothing to attach it to
        answer = await reply(ws, '{"type": "clientEvent", "id": 1, "event": "x", "data": {}}')
        assert answer["code"] == "auth.required"
        await ws.close()


async def raw_socket(service: Service, http: aiohttp.ClientSession
                     ) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(service.ws_url, protocols=[SUBPROTOCOL],
                                 headers={"Origin": service.url})


async def reply(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, Any]:
    await ws.send_str(text)
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("text", "code"), [
    ("{nope", "message.malformed"),
    ("[1, 2]", "message.malformed"),
    ('{"type": "teleport", "id": 1}', "message.unknown_type"),
    ('{"type": "publish", "id": 2}', "message.invalid"),
    ('{"type": "hello", "id": 3, "token": 5}', "message.invalid"),
    ('{"type": "join", "id": 4}', "auth.required"),
    ('{"type": "ping", "id": 5, "extra": 1}', "message.invalid"),
    ('{"type": "ping", "id": 6, "pad": "' + "x" * 70000 + '"}', "message.too_large"),
])
async def test_malformed_messages_get_their_codes(
    service: Service, live: LiveCall, text: str, code: str
) -> None:
    """Each malformed message gets its error code (and its id back), and the socket stays usable."""
    async with aiohttp.ClientSession() as http:
        ws = await raw_socket(service, http)
        answer = await reply(ws, text)
        assert (answer["type"], answer["code"]) == ("error", code)
        if '"id": ' in text and code != "message.too_large":  # too large: never parsed
            assert answer["re"] == int(text.split('"id": ')[1].split(",")[0].rstrip("}"))
        assert (await reply(ws, '{"type": "ping", "id": 99}'))["type"] == "pong"
        await ws.close()
    await live.still_fine()


async def test_binary_and_oversized_frames(service: Service, live: LiveCall) -> None:
    """A binary frame is `message.malformed`; a frame beyond the hard limit closes the socket."""
    async with aiohttp.ClientSession() as http:
        ws = await raw_socket(service, http)
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_json())["code"] == "message.malformed"
        await ws.send_str("x" * (2 * 1024 * 1024))  # beyond the hard frame limit
        closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await live.still_fine()


async def test_invalid_sdp_is_refused_and_the_participant_can_try_again(
    service: Service, live: LiveCall
) -> None:
    """An invalid or receive-only offer is refused `sdp.invalid`; a good one then publishes."""
    target = other_call(service)
    client = CallClient(service, service.token(target.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        for sdp in ("garbage", "v=0\r\n", _recv_offer()):  # the last receives, not sends
            with pytest.raises(ProtocolError) as info:
                await client.request("publish", sdp=sdp)
            assert info.value.code == "sdp.invalid"
        await client.publish()  # a good offer on the same connection still works
        assert target.participants["pat-9"].published == {"audio", "video"}
    finally:
        await client.close()
    await live.still_fine()


async def test_a_flood_is_rate_limited_then_cut_off_alone(
    service: Service, live: LiveCall
) -> None:
    """A flooding socket is rate limited, then closed, while the live call is unharmed."""
    async with aiohttp.ClientSession() as http:
        ws = await raw_socket(service, http)
        for i in range(400):
            await ws.send_str(json.dumps({"type": "ping", "id": i}))
        codes: list[str] = []
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            codes.append(body.get("code", body["type"]))
        assert "pong" in codes and "rate.limited" in codes
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    await live.still_fine()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = st.sampled_from(["id", "token", "sdp", "participant", "target", "candidate",
                          "sdpMid", "sdpMLineIndex", "event", "data", "protocol", "x"])
MESSAGE = st.fixed_dictionaries(
    {"type": st.sampled_from([*MESSAGES, "nope", ""])},
    # Ids unlike the few our client uses for its own requests, so replies cannot be mixed up.
    optional={"id": st.integers(1000, 2000) | st.text(max_size=5)},
).flatmap(lambda base: st.dictionaries(FIELDS, JSON, max_size=4).map(
    lambda extra: {**extra, **base}))


class RandomMessages:
    """One connection of a participant in a call of its own; sends what hypothesis draws."""

    def __init__(self, service: Service, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.codes: set[str] = set()
        # Hypothesis drives a plain function (in a thread); the service lives on this loop.
        self.main_loop = loop
        #: Set when the test is over (or timed out): the thread stops drawing at once, and
        #: the loop's executor shutdown does not wait out every remaining example.
        self.stopped = False

    def run(self, messages: list[dict[str, Any] | str]) -> None:
        if self.stopped:
            raise RuntimeError("the test is over")
        self.codes = set()
        future = asyncio.run_coroutine_threadsafe(self._send(messages), self.main_loop)
        future.result(timeout=scaled(20))

    async def _send(self, messages: list[dict[str, Any] | str]) -> None:
        call = other_call(self.service)
        client = CallClient(self.service, self.service.token(call.id, "doc-9", role="doctor"))
        try:
            await client.connect()
            await client.join()
            for message in messages:
                text = message if isinstance(message, str) else json.dumps(message)
                await client.send_raw(text)
            pong = await client.request("ping")  # ordered after every reply to the above
            assert pong["type"] == "pong"
            for event in client.events:
                if event["type"] == "error":
                    self.codes.add(event["code"])
        finally:
            await client.close()
            await self.service.hub.end(call.id)


# The live call next door uses `random` (aiortc) on the event loop while hypothesis draws in
# its thread; hypothesis would take that for a strategy using `random`.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.timeout(scaled(90))  # 40 calls set up and torn down, next to a live one
async def test_random_messages_never_break_the_hub(service: Service, live: LiveCall) -> None:
    """Random messages only get documented error codes, never `internal`, and no call breaks."""
    sender = RandomMessages(service, asyncio.get_running_loop())
    seen: set[str] = set()

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(MESSAGE | st.text(max_size=40), min_size=1, max_size=12))
    def check(messages: list[dict[str, Any] | str]) -> None:
        sender.run(messages)
        seen.update(sender.codes)
        assert sender.codes <= set(CODES), sender.codes - set(CODES)
        assert "internal" not in sender.codes

    started = time.monotonic()
    try:
        await asyncio.to_thread(check)
    finally:
        sender.stopped = True
    assert seen, "random messages should provoke some errors"
    assert time.monotonic() - started < scaled(60)
    await live.still_fine()
