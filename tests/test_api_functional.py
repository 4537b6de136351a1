"""The MIS REST API over real HTTP against the running service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.tokens import verify_join_token
from tests.hub_fixtures import API_KEY, JWT_SECRET, CallClient, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CONSULTATION = {
    "kind": "consultation",
    "participants": [{"id": "pat-1", "name": "Анна Петрова", "role": "patient"},
                     {"id": "doc-1", "name": "Д-р Иванов", "role": "doctor"}],
    "metadata": {"mis_visit": "V-1"},
}


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as svc:
        yield svc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any = None, *,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body, headers=AUTH if headers is None else headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
    {"Authorization": f"Basic {API_KEY}"},
], ids=["missing", "wrong-key", "no-scheme", "basic"])
async def test_requests_without_a_valid_key_are_refused(
    service: Service, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                              headers=headers)
    assert (status, body["code"]) == (401, "auth.invalid")
    assert service.hub.calls == {}


async def test_created_call_hands_out_links_that_join_it(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
    assert status == 201
    assert body["state"] == "created" and body["metadata"] == {"mis_visit": "V-1"}
    by_id = {p["id"]: p for p in body["participants"]}
    assert set(by_id) == {"pat-1", "doc-1"}
    settings = service.settings
    claims = verify_join_token(by_id["doc-1"]["token"], keys=[JWT_SECRET],
                               issuer=settings.auth.jwt_issuer,
                               audience=settings.auth.jwt_audience)
    assert (claims.call_id, claims.subject, claims.role) == (body["id"], "doc-1", "doctor")
    assert by_id["pat-1"]["link"] == f"{settings.public_url}/join/{by_id['pat-1']['token']}"

    client = CallClient(service, by_id["pat-1"]["token"])
    try:
        await client.connect()
        joined = await client.join()
        assert joined["call"]["id"] == body["id"]
    finally:
        await client.close()
    async with http.get(f"{service.url}/api/v1/calls/{body['id']}", headers=AUTH) as r:
        state = await r.json()
    assert "joined" in [e["event"] for e in state["timeline"]]


@pytest.mark.parametrize(("change", "field"), [
    ({"kind": "party"}, "kind"),
    ({"participants": []}, "participants"),
    ({"participants": [{"id": "a", "name": "A", "role": "nurse"}]}, "participants[0].role"),
    ({"participants": [{"id": "a b", "name": "A", "role": "patient"}]}, "participants[0].id"),
    ({"participants": [{"id": "a", "name": "", "role": "patient"}]}, "participants[0].name"),
    ({"participants": [{"id": "a", "name": "A", "role": "patient"},
                       {"id": "a", "name": "B", "role": "doctor"}]}, "participants[1].id"),
    ({"metadata": [1]}, "metadata"),
])
async def test_invalid_calls_name_the_field_and_create_nothing(
    service: Service, http: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    status, body = await post(http, f"{service.url}/api/v1/calls", {**CONSULTATION, **change})
    assert (status, body["code"], body["field"]) == (422, "request.invalid", field)
    assert service.hub.calls == {}


async def test_body_that_is_not_json_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{service.url}/api/v1/calls", data=b"{nope",
                         headers={**AUTH, "Content-Type": "application/json"}) as r:
        assert r.status == 422
        assert (await r.json())["field"] == "body"


async def test_ended_call_refuses_new_tokens_and_unknown_calls_are_404(
    service: Service, http: aiohttp.ClientSession
) -> None:
    _, created = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
    base = f"{service.url}/api/v1/calls/{created['id']}"
    status, fresh = await post(http, f"{base}/tokens")
    assert status == 200 and len(fresh["participants"]) == 2
    status, ended = await post(http, f"{base}/end")
    assert (status, ended["state"]) == (200, "ended")
    status, body = await post(http, f"{base}/tokens")
    assert (status, body["code"]) == (409, "call.ended")
    status, body = await post(http, f"{service.url}/api/v1/calls/nope/end")
    assert (status, body["code"]) == (404, "call.not_found")
