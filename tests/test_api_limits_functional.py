"""JSON limits on the MIS side: deep or odd REST bodies get a documented 422, never a 500;
a call whose data cannot be encoded as it is still reaches its history and webhooks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mis.history import CallStore, EventSink
from mis.jsonsafe import TOO_DEEP
from mis.webhooks import Endpoint, Outbox
from signaling.call import Call, CallKind
from tests.hub_fixtures import API_KEY, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
PARTICIPANTS = [{"id": "pat-1", "name": "P", "role": "patient"},
                {"id": "doc-1", "name": "D", "role": "doctor"}]


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def strict(text: str) -> Any:
    """json.loads refusing NaN and Infinity, as a MIS's strict parser does."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer, redis_client: Any
                  ) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as svc:
        yield svc


def call_body(metadata: Any) -> str:
    return json.dumps({"kind": "consultation", "participants": PARTICIPANTS,
                       "metadata": metadata})


def deep_text(depth: int) -> str:
    """`depth` nested objects as text (json.dumps itself cannot write that deep)."""
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(("raw", "field"), [
    ("[" * 3000 + "]" * 3000, "body"),
    (deep_text(3000), "body"),
    (json.dumps(nested(40)), "body"),
    (call_body({"x": 1}).replace('"x": 1', '"x": NaN'), "body"),
    (call_body({"x": 1}).replace('"x": 1', '"x": -Infinity'), "body"),
    (call_body(nested(9)), "metadata"),
    (call_body({"x": 1}).replace('{"x": 1}', deep_text(975)), "body"),
    (call_body({"pad": "x" * 20000}), "metadata"),
], ids=["array-3000", "object-3000", "object-40", "nan", "infinity", "metadata-9-deep",
        "metadata-975-deep", "metadata-20k"])
async def test_deep_or_non_json_bodies_are_refused_with_422(
    service: Service, raw: str, field: str
) -> None:
    """Nesting past the limits, NaN and oversized metadata: 422 naming the field, no call."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{service.url}/api/v1/calls", data=raw.encode(), headers=AUTH) as r:
        body = await r.json()
        assert (r.status, body["code"], body["field"]) == (422, "request.invalid", field)
    assert service.hub.calls == {}


async def test_refused_requests_keep_the_connection_and_the_next_post_works(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Deep bodies, deep metadata, a wrong method, an unknown route and oversized bodies
    (with a length and chunked) each get a JSON error with a documented code on one
    kept-alive connection, and a POST after them on that same connection creates the call."""
    opened: list[object] = []

    async def count(_session: object, _ctx: object, params: object) -> None:
        opened.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    connector = aiohttp.TCPConnector(limit=1)
    refused = [("POST", "/api/v1/calls", "[" * 3000 + "]" * 3000),
               ("POST", "/api/v1/calls", call_body({"x": 1}).replace('{"x": 1}',
                                                                     deep_text(975))),
               ("GET", "/api/v1/calls/nope/end", ""),
               ("DELETE", "/api/v1/calls/nope", ""),
               ("POST", "/api/v1/nothing-here", "{}"),
               ("POST", "/api/v1/calls", call_body({"pad": "x" * 70000})),
               ("POST", "/api/v1/calls", None)]  # chunked, no length: 70 KB of padding

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"kind": "consultation", "metadata": {"pad": "'
        for _ in range(70):
            yield b"x" * 1000
        yield b'"}}'

    answers = []
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        for method, path, raw in refused:
            async with http.request(method, service.url + path, headers=AUTH, data=(
                    raw.encode() if raw is not None else chunked())) as r:
                answers.append((r.status, (await r.json())["code"], r.headers.get("Allow")))
        async with http.post(f"{service.url}/api/v1/calls", data=call_body({"x": 1}),
                             headers=AUTH) as r:
            assert r.status == 201, await r.text()
    assert answers == [(422, "request.invalid", None), (422, "request.invalid", None),
                       (405, "request.method_not_allowed", "POST"),
                       (405, "request.method_not_allowed", "GET,HEAD"),
                       (404, "request.not_found", None),
                       (413, "request.too_large", None), (413, "request.too_large", None)]
    assert len(opened) == 1  # one connection for all eight: none was dropped
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_the_precheck_refuses_deep_json_with_400_and_keeps_the_connection(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """The page's unauthenticated POST /precheck/ice answers a body nested 100,000 deep with
    400 message.invalid (was a 500 and a traceback), and the connection serves the next."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for raw in ("[" * 100000 + "]" * 100000, deep_text(100000), '{"token": 1}'):
            async with http.post(f"{service.url}/precheck/ice", data=raw.encode()) as r:
                assert (r.status, (await r.json())["code"]) == (400, "message.invalid")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_metadata_at_the_limits_is_accepted(service: Service) -> None:
    """Eight levels of metadata and a 16 KB-ish value are still a valid call."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{service.url}/api/v1/calls", data=call_body(
                {**nested(7), "pad": "x" * 15000}).encode(), headers=AUTH) as r:
        assert r.status == 201, await r.text()


async def test_undecodable_call_data_still_reaches_history_and_get_calls(
    service: Service
) -> None:
    """Data the hub holds nested ~975 deep or with NaN (client diagnostics, older calls)
    does not stop the call's history; GET /calls/{id} stays strict JSON."""
    call = service.hub.create_call(
        CallKind.CONSULTATION, [("pat-1", "P", "patient"), ("doc-1", "D", "doctor")],
        {"deep": nested(975), "bad": float("nan"), "inf": float("inf")})
    await service.app_sink_settled()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.url}/api/v1/calls/{call.id}",
                            headers=AUTH) as r:
            live = strict(await r.text())
        async with http.get(f"{service.url}/api/v1/calls?limit=10", headers=AUTH) as r:
            listed = strict(await r.text())
    assert live["metadata"]["bad"] is None and live["metadata"]["inf"] is None
    assert [c["id"] for c in listed["calls"]] == [call.id]  # in the history


async def test_the_event_sink_journals_and_publishes_what_json_cannot_encode(
    tmp_path: Path, redis_client: Any
) -> None:
    """A snapshot json.dumps raises on (RecursionError, NaN) is journalled, stored and
    published in a strict form instead of being dropped by the hub's hook loop."""
    journal = tmp_path / "call-events.journal"
    outbox = Outbox(redis_client, [Endpoint("http://127.0.0.1:9/hook")], "s" * 32)
    sink = EventSink(CallStore(redis_client), outbox, journal=journal)
    sink.start()
    call = Call(kind=CallKind.CONSULTATION,
                metadata={"deep": nested(975), "bad": float("nan")})
    sink("call.created", call, {})
    sink("call.ended", call, {"detail": float("-inf")})
    assert len([strict(line) for line in journal.read_text().splitlines()]) == 2
    await sink.settle()
    await sink.flush()
    stored = await CallStore(redis_client).get(call.id)
    assert stored is not None and stored["metadata"]["bad"] is None
    deep = stored["metadata"]["deep"]
    while isinstance(deep, dict):
        deep = deep["a"]
    assert deep == TOO_DEEP
    events = await outbox.events_of(call.id)
    assert [e["event"] for e in events] == ["call.created", "call.ended"]
    assert events[1]["data"]["detail"] is None
