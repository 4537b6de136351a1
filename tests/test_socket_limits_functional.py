"""Hostile JSON on the call socket: nesting, lone surrogates, NaN. Each message is refused
with `message.invalid` and logged once without a traceback; the socket, the call's history
and the live call next door go on."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.protocol import SUBPROTOCOL
from tests.hub_fixtures import API_KEY, CallClient, Service
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


def nested(depth: int) -> str:
    """JSON arrays `depth` deep: `[[[…]]]`."""
    return "[" * depth + "]" * depth


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in the answer")
    return json.loads(text, parse_constant=refuse)


class RawSocket:
    """A socket that sends exactly the text given and reads every reply."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def __aenter__(self) -> RawSocket:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.service.ws_url, protocols=[SUBPROTOCOL],
                                             headers={"Origin": self.service.url})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()

    async def reply(self, text: str) -> dict[str, Any]:
        await self.ws.send_str(text)
        msg = await self.ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg, self.ws.close_code)
        return strict_json(msg.data)  # type: ignore[no-any-return]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_deep_json_before_hello_is_refused_once_and_the_socket_goes_on(
    service: Service, live: LiveCall, caplog: pytest.LogCaptureFixture
) -> None:
    """Unauthenticated `[[[…]]]` 1,000 and 30,000 deep, and a message one level too deep,
    each get `message.invalid`, one log line, no traceback; the socket answers after."""
    caplog.set_level(logging.INFO)
    async with RawSocket(service) as sock:
        for text in (nested(1000), nested(30000)):
            answer = await sock.reply(text)
            assert (answer["type"], answer["code"]) == ("error", "message.invalid")
            assert "re" not in answer  # its id could not be read
        deep = '{"type": "ping", "id": 2, "x": ' + nested(16) + "}"  # 17 with the message
        answer = await sock.reply(deep)
        assert (answer["code"], answer["re"]) == ("message.invalid", 2)
        ok = '{"type": "clientEvent", "id": 3, "event": "e", "data": ' \
             '{"a": [[[[[[[[[[[[[1]]]]]]]]]]]]]}}'  # 16 deep: allowed, but not authenticated
        assert (await sock.reply(ok))["code"] == "auth.required"
        assert (await sock.reply('{"type": "ping", "id": 4}'))["type"] == "pong"
    refusals = [r for r in caplog.records if "message.invalid" in r.getMessage()]
    assert len(refusals) == 3
    no_tracebacks(caplog)
    await live.still_fine()


async def test_a_client_event_nested_975_deep_is_refused_and_the_call_keeps_its_history(
    service: Service, live: LiveCall, caplog: pytest.LogCaptureFixture
) -> None:
    """`clientEvent.data` 975 and 985 deep is refused; the call's later events still reach
    its history, which the MIS reads."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        for count, depth in enumerate((975, 985), start=1):
            # Written out by hand: the test's own json.dumps would hit the recursion limit.
            await client.send_raw(f'{{"type": "clientEvent", "id": {depth}, "event": "deep", '
                                  f'"data": {{"d": {nested(depth - 1)}}}}}')
            await client.wait_event("error", lambda e, n=count: sum(
                x["type"] == "error" for x in client.events) >= n)
        errors = [e for e in client.events if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["message.invalid"] * 2
        # Too deep for Python's own decoder there is no id to name (where that starts depends
        # on the stack the decoder runs on).
        assert errors[0].get("re") in (975, None) and errors[1].get("re") in (985, None)
        await client.request("clientEvent", event="fine", data={"k": [1, {"v": 2}]})
    finally:
        await client.close()
    await service.hub.end(call.id)
    await service.app_sink_settled()
    async with aiohttp.ClientSession() as http, \
            http.get(f"{service.url}/api/v1/calls/{call.id}",
                     headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 200
        snap = strict_json(await resp.text())
    events = [e["event"] for e in snap["timeline"]]
    assert "client.fine" in events and "client.deep" not in events
    assert snap["state"] in ("ended", "failed")
    no_tracebacks(caplog)
    await live.still_fine()


async def test_a_lone_surrogate_is_refused_and_never_echoed(service: Service) -> None:
    """`"\\ud800"` as a request id or inside a field gets `message.invalid` (the id is not
    echoed: UTF-8 cannot carry it), and the socket's writer lives on."""
    async with RawSocket(service) as sock:
        answer = await sock.reply('{"type": "ping", "id": "\\ud800"}')
        assert (answer["code"], "re" in answer) == ("message.invalid", False)
        answer = await sock.reply('{"type": "ping", "id": "ok\\udfff"}')
        assert (answer["code"], "re" in answer) == ("message.invalid", False)
        answer = await sock.reply('{"type": "clientEvent", "id": 3, "event": "x", '
                                  '"data": {"\\udc00": 1}}')
        assert (answer["code"], answer["re"]) == ("message.invalid", 3)
        answer = await sock.reply('{"type": "ping", "id": "\\ud83d\\ude00"}')  # a real pair
        assert (answer["type"], answer["re"]) == ("pong", "\U0001F600")


async def test_a_name_with_a_lone_surrogate_reaches_the_others_escaped(
    service: Service
) -> None:
    """A server message holding a lone surrogate (a name from the MIS) goes out as a JSON
    escape instead of killing the receiving socket's writer."""
    from signaling.call import CallKind

    call = service.hub.create_call(CallKind.CONSULTATION, [("pat-9", "P", "patient"),
                                                          ("doc-9", "Dr \ud800", "doctor")])
    doctor = CallClient(service, service.token(call.id, "doc-9", role="doctor"))
    patient = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await doctor.connect()
        await patient.connect()
        await doctor.join()
        joined = await patient.join()
        names = {p["id"]: p["name"] for p in joined["participants"]}
        assert names["doc-9"] == "Dr \ud800"
        assert (await patient.request("ping"))["type"] == "pong"
    finally:
        await doctor.close()
        await patient.close()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
async def test_nan_and_infinity_are_refused_and_never_reach_the_api(
    service: Service, number: str
) -> None:
    """NaN, ±Infinity and floats beyond double range from a client are refused, so
    `GET /calls/{id}` stays strict JSON."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        await client.send_raw('{"type": "clientEvent", "id": 77, "event": "n", '
                              '"data": {"v": ' + number + "}}")
        reply = await client.wait_event("error")
        assert (reply["code"], reply["re"]) == ("message.invalid", 77)
        assert (await client.request("ping"))["type"] == "pong"
    finally:
        await client.close()
    async with aiohttp.ClientSession() as http, \
            http.get(f"{service.url}/api/v1/calls/{call.id}",
                     headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        snap = strict_json(await resp.text())
    assert "client.n" not in [e["event"] for e in snap["timeline"]]
