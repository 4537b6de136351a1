"""The MIS REST API over real HTTP against the running service."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from signaling.tokens import verify_join_token
from telemed.app import RECORDINGS
from tests.helpers import scaled
from tests.hub_fixtures import (
    API_KEY,
    JWT_SECRET,
    CallClient,
    ProtocolError,
    Service,
    run_service,
)
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer
from tests.webhook_receiver import run_receiver

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CONSULTATION = {
    "kind": "consultation",
    "participants": [{"id": "pat-1", "name": "Анна Петрова", "role": "patient"},
                     {"id": "doc-1", "name": "Д-р Иванов", "role": "doctor"}],
    "metadata": {"mis_visit": "V-1"},
}


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer, redis_client: Any
                  ) -> AsyncIterator[Service]:
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
    """A missing, wrong or mis-schemed API key is refused `auth.invalid` and creates no call."""
    status, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                              headers=headers)
    assert (status, body["code"]) == (401, "auth.invalid")
    assert service.hub.calls == {}


async def test_created_call_hands_out_links_that_join_it(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A new call hands each participant a signed token and a link, and the link joins it."""
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


async def nothing_stored(redis_client: Any) -> bool:
    """No call in the history and no idempotency claim left behind."""
    calls = await redis_client.zcard("telemed:calls:index")
    claims = await redis_client.keys("telemed:idempotency:*")
    return bool(calls == 0 and claims == [])


def mis_jwt(**overrides: Any) -> str:
    """What the MIS signs to call the API instead of sending an API key."""
    now = int(time.time())
    claims = {"iss": "mis", "aud": "telemed-api", "iat": now, "exp": now + 60,
              "jti": uuid.uuid4().hex, **overrides}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, JWT_SECRET,
                      algorithm="HS256")


async def test_a_jwt_signed_by_the_mis_authenticates_once(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A JWT the MIS signs opens the API once; replaying its jti is refused `already used`."""
    token = mis_jwt()
    status, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                              headers={"Authorization": f"Bearer {token}"})
    assert status == 201, body
    status, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                              headers={"Authorization": f"Bearer {token}"})
    assert (status, body["code"]) == (401, "auth.invalid")
    assert "already used" in body["message"]
    assert len(service.hub.calls) == 1


@pytest.mark.parametrize("token", [
    pytest.param(lambda: mis_jwt(aud="telemed"), id="join-token-audience"),
    pytest.param(lambda: mis_jwt(iss="someone-else"), id="wrong-issuer"),
    pytest.param(lambda: mis_jwt(exp=int(time.time()) - 60), id="expired"),
    pytest.param(lambda: mis_jwt(exp=int(time.time()) + 3600), id="lives-too-long"),
    pytest.param(lambda: mis_jwt(jti=None), id="no-jti"),
    pytest.param(lambda: mis_jwt(exp=None), id="no-exp"),
    pytest.param(lambda: mis_jwt(iat=None), id="no-iat"),
    pytest.param(lambda: mis_jwt()[:-3] + "AAA", id="forged-signature"),
    pytest.param(lambda: jwt.encode({"iss": "mis", "aud": "telemed-api", "jti": "x",
                                     "iat": int(time.time()), "exp": int(time.time()) + 60},
                                    "not-the-secret-" * 3, algorithm="HS256"),
                 id="other-key"),
])
async def test_jwts_that_are_not_the_mis_fresh_own_are_refused(
    service: Service, http: aiohttp.ClientSession, redis_client: Any, token: Any
) -> None:
    """A JWT with a wrong aud/iss/key/lifetime or no jti/exp/iat is refused and stores nothing."""
    status, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                              headers={"Authorization": f"Bearer {token()}"})
    assert (status, body["code"]) == (401, "auth.invalid")
    assert service.hub.calls == {} and await nothing_stored(redis_client)


async def test_a_join_token_does_not_open_the_api(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A participant's join token is not an API credential: the API answers `auth.invalid`."""
    _, created = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
    join = created["participants"][0]["token"]
    async with http.get(f"{service.url}/api/v1/calls",
                        headers={"Authorization": f"Bearer {join}"}) as r:
        assert (r.status, (await r.json())["code"]) == (401, "auth.invalid")


@pytest.mark.parametrize(("change", "field"), [
    ({"kind": None}, "kind"),
    ({"participants": None}, "participants"),
    ({"participants": "pat-1"}, "participants"),
    ({"participants": ["pat-1"]}, "participants[0]"),
    ({"participants": [{"name": "A", "role": "patient"}]}, "participants[0].id"),
    ({"participants": [{"id": 7, "name": "A", "role": "patient"}]}, "participants[0].id"),
    ({"participants": [{"id": "a", "name": ["A"], "role": "patient"}]},
     "participants[0].name"),
    ({"kind": "party"}, "kind"),
    ({"schedule": "tomorrow"}, "schedule"),
    ({"schedule": {"start": "9:00", "end": 2e9}}, "schedule.start"),
    ({"schedule": {"start": 2e9, "end": True}}, "schedule.end"),
    ({"schedule": {"start": 2e9, "end": 2e9 - 60}}, "schedule.end"),
    ({"schedule": {"start": 1e9, "end": 1e9 + 60}}, "schedule.end"),  # in the past
    ({"schedule": {"start": 2e9, "end": 2e9 + 30 * 86400}}, "schedule.end"),
    ({"participants": []}, "participants"),
    ({"participants": [{"id": "a", "name": "A", "role": "nurse"}]}, "participants[0].role"),
    ({"participants": [{"id": "a b", "name": "A", "role": "patient"}]}, "participants[0].id"),
    ({"participants": [{"id": "a", "name": "", "role": "patient"}]}, "participants[0].name"),
    ({"participants": [{"id": "a", "name": "A", "role": "patient"},
                       {"id": "a", "name": "B", "role": "doctor"}]}, "participants[1].id"),
    ({"metadata": [1]}, "metadata"),
])
async def test_invalid_calls_name_the_field_and_create_nothing(
    service: Service, http: aiohttp.ClientSession, redis_client: Any,
    change: dict[str, Any], field: str
) -> None:
    """An invalid call request is refused 422 naming its bad field, and nothing is stored."""
    request = {k: v for k, v in {**CONSULTATION, **change}.items() if v is not None}
    status, body = await post(http, f"{service.url}/api/v1/calls", request,
                              headers={**AUTH, "Idempotency-Key": "k-1"})
    assert (status, body["code"], body["field"]) == (422, "request.invalid", field)
    assert service.hub.calls == {}
    assert await nothing_stored(redis_client)


async def test_a_scheduled_call_echoes_its_window_and_its_tokens_last_through_it(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A booked call keeps its window, and its tokens (renewed ones too) last an hour past it."""
    start = time.time() + 3 * 86400  # booked three days ahead: beyond the 24 h token_ttl
    window = {"start": start, "end": start + 1800}
    status, body = await post(http, f"{service.url}/api/v1/calls",
                              {**CONSULTATION, "schedule": window})
    assert (status, body["schedule"]) == (201, window), body
    settings = service.settings
    for p in body["participants"]:
        claims = jwt.decode(p["token"], JWT_SECRET, algorithms=["HS256"],
                            audience=settings.auth.jwt_audience)
        assert abs(claims["exp"] - (window["end"] + 3600)) < 5
    status, fresh = await post(http, f"{service.url}/api/v1/calls/{body['id']}/tokens")
    claims = jwt.decode(fresh["participants"][0]["token"], JWT_SECRET, algorithms=["HS256"],
                        audience=settings.auth.jwt_audience)
    assert abs(claims["exp"] - (window["end"] + 3600)) < 5
    await service.app_sink_settled()
    async with http.get(f"{service.url}/api/v1/calls?limit=1", headers=AUTH) as r:
        assert (await r.json())["calls"][0]["schedule"] == window


async def test_body_that_is_not_json_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A request body that is not JSON is refused 422 with the field `body`."""
    async with http.post(f"{service.url}/api/v1/calls", data=b"{nope",
                         headers={**AUTH, "Content-Type": "application/json"}) as r:
        assert r.status == 422
        assert (await r.json())["field"] == "body"


async def test_ended_call_refuses_new_tokens_and_unknown_calls_are_404(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """An ended call refuses new tokens `call.ended`; ending an unknown call is 404."""
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


async def test_calls_are_listed_newest_first_by_state_and_paged(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """Calls list newest first, page by cursor and filter by state; a bad query names its field."""
    ids = []
    for _ in range(3):
        _, created = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
        ids.append(created["id"])
    await post(http, f"{service.url}/api/v1/calls/{ids[0]}/end")
    await service.app_sink_settled()
    async with http.get(f"{service.url}/api/v1/calls?limit=2", headers=AUTH) as r:
        first = await r.json()
    assert [c["id"] for c in first["calls"]] == [ids[2], ids[1]]
    async with http.get(f"{service.url}/api/v1/calls?limit=2&cursor={first['nextCursor']}",
                        headers=AUTH) as r:
        rest = await r.json()
    assert ids[0] in [c["id"] for c in rest["calls"]]
    async with http.get(f"{service.url}/api/v1/calls?state=ended&limit=200",
                        headers=AUTH) as r:
        ended = await r.json()
    assert ids[0] in [c["id"] for c in ended["calls"]]
    assert not {ids[1], ids[2]} & {c["id"] for c in ended["calls"]}
    async with http.get(f"{service.url}/api/v1/calls?state=bogus", headers=AUTH) as r:
        assert (r.status, (await r.json())["field"]) == (422, "state")
    for query, field in (("limit=inf", "limit"), ("since=nan", "since"),
                         ("cursor=-inf", "cursor"), ("limit=x", "limit")):
        async with http.get(f"{service.url}/api/v1/calls?{query}", headers=AUTH) as r:
            assert (r.status, (await r.json())["field"]) == (422, field), query
        async with http.get(f"{service.url}/api/v1/recordings?{query}", headers=AUTH) as r:
            if field != "cursor":
                assert (r.status, (await r.json())["field"]) == (422, field), query


async def test_history_outlives_the_process(
    tmp_path: Path, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """A new process serves the last one's calls and timelines; a booked call stays booked."""
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",)) as a:
        _, created = await post(http, f"{a.url}/api/v1/calls", CONSULTATION)
        await post(http, f"{a.url}/api/v1/calls/{created['id']}/end")
        _, open_call = await post(http, f"{a.url}/api/v1/calls", CONSULTATION)
        await a.app_sink_settled()
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",)) as b:
        async with http.get(f"{b.url}/api/v1/calls/{created['id']}", headers=AUTH) as r:
            stored = await r.json()
        async with http.get(f"{b.url}/api/v1/calls/{open_call['id']}", headers=AUTH) as r:
            cut = await r.json()
    assert stored["state"] == "ended" and stored["metadata"] == {"mis_visit": "V-1"}
    assert [e["event"] for e in stored["timeline"]][-1] == "state"
    # The first process stopped cleanly: a booked call nobody is in stays booked.
    assert (cut["state"], cut["failure"]) == ("created", None)


async def test_idempotent_creation_returns_the_same_call(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A retry with the same Idempotency-Key returns the same call; a different body is a 409."""
    headers = {**AUTH, "Idempotency-Key": "visit-V-1-attempt"}
    s1, one = await post(http, f"{service.url}/api/v1/calls", CONSULTATION, headers=headers)
    s2, two = await post(http, f"{service.url}/api/v1/calls", CONSULTATION, headers=headers)
    assert (s1, s2) == (201, 200) and one["id"] == two["id"]
    assert len(service.hub.calls) == 1
    status, body = await post(http, f"{service.url}/api/v1/calls",
                              {**CONSULTATION, "metadata": {}}, headers=headers)
    assert (status, body["code"]) == (409, "request.conflict")
    assert len(service.hub.calls) == 1


async def test_concurrent_retries_with_one_idempotency_key_make_one_call(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """Concurrent retries with one Idempotency-Key create exactly one call."""
    headers = {**AUTH, "Idempotency-Key": "visit-V-2"}
    answers = await asyncio.gather(*(post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                                          headers=headers) for _ in range(5)))
    assert len(service.hub.calls) == 1
    (call_id,) = service.hub.calls
    assert [status for status, _ in answers].count(201) == 1
    for status, body in answers:
        # Either the call, or "still being processed" for a retry that raced the first.
        assert (status, body.get("id")) in ((201, call_id), (200, call_id)) or \
            (status, body["code"]) == (409, "request.conflict"), body


async def test_an_idempotent_retry_after_a_restart_returns_the_same_call(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any,
    http: aiohttp.ClientSession
) -> None:
    """After a restart, an idempotent retry returns the booked call, which can still be ended."""
    headers = {**AUTH, "Idempotency-Key": "visit-V-3"}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",)) as a:
        status, first = await post(http, f"{a.url}/api/v1/calls", CONSULTATION,
                                   headers=headers)
        assert status == 201
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",)) as b:
        status, again = await post(http, f"{b.url}/api/v1/calls", CONSULTATION,
                                   headers=headers)
        assert (status, again["id"]) == (200, first["id"])
        assert b.hub.calls == {}
        # The booked call outlived the restart: the MIS can still end it.
        status, body = await post(http, f"{b.url}/api/v1/calls/{first['id']}/end")
        assert (status, body["state"]) == (200, "ended")


async def test_unknown_participants_and_calls_are_404_and_change_nothing(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """Removing an unknown participant, or touching an unknown call, is 404 and changes nothing."""
    _, created = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
    base = f"{service.url}/api/v1/calls/{created['id']}"
    async with http.delete(f"{base}/participants/nobody", headers=AUTH) as r:
        assert (r.status, (await r.json())["code"]) == (404, "participant.not_found")
    async with http.delete(f"{service.url}/api/v1/calls/nope/participants/pat-1",
                           headers=AUTH) as r:
        assert (r.status, (await r.json())["code"]) == (404, "call.not_found")
    async with http.get(f"{service.url}/api/v1/calls/nope", headers=AUTH) as r:
        assert (r.status, (await r.json())["code"]) == (404, "call.not_found")
    call = service.hub.calls[created["id"]]
    assert call.state.value == "created"
    assert not any(p.extra.get("removed") for p in call.participants.values())


async def test_one_participant_gets_a_new_token_and_a_removed_one_is_out(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """One participant's token can be renewed; a removed one is told so and cannot come back."""
    _, created = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
    base = f"{service.url}/api/v1/calls/{created['id']}"
    status, fresh = await post(http, f"{base}/tokens", {"participant": "pat-1"})
    assert status == 200 and [p["id"] for p in fresh["participants"]] == ["pat-1"]
    status, body = await post(http, f"{base}/tokens", {"participant": "nobody"})
    assert (status, body["code"]) == (404, "participant.not_found")

    patient = CallClient(service, fresh["participants"][0]["token"])
    doctor = CallClient(service, next(p["token"] for p in created["participants"]
                                      if p["id"] == "doc-1"))
    try:
        await asyncio.gather(patient.connect(), doctor.connect())
        await patient.join()
        await doctor.join()
        async with http.delete(f"{base}/participants/pat-1", headers=AUTH) as r:
            assert r.status == 200
        await patient.wait_event("removed")
        await doctor.wait_event("participantLeft")
        again = CallClient(service, fresh["participants"][0]["token"])
        try:
            await again.connect()
            with pytest.raises(ProtocolError) as info:
                await again.hello()
            assert info.value.code == "call.removed"
        finally:
            await again.close()
    finally:
        await asyncio.gather(patient.close(), doctor.close())


async def test_oversized_bodies_and_repeated_bad_keys_are_refused(
    service: Service, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Oversized bodies (chunked too) are 413; guessed keys get rate limited, logged keyless."""
    async with http.post(f"{service.url}/api/v1/calls", data=b"{" + b" " * 70000 + b"}",
                         headers={**AUTH, "Content-Type": "application/json"}) as r:
        assert (r.status, (await r.json())["code"]) == (413, "request.too_large")
    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"kind": "consultation", "metadata": {"pad": "'
        for _ in range(10):
            yield b"x" * 8000
        yield b'"}}'

    async with http.post(f"{service.url}/api/v1/calls", data=chunked(),
                         headers={**AUTH, "Content-Type": "application/json"}) as r:
        assert (r.status, (await r.json())["code"]) == (413, "request.too_large")
    codes = []
    for _ in range(25):
        _, body = await post(http, f"{service.url}/api/v1/calls", CONSULTATION,
                             headers={"Authorization": "Bearer guess"})
        codes.append(body["code"])
    assert codes[0] == "auth.invalid" and codes[-1] == "rate.limited"
    assert service.hub.calls == {}
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == codes.count("auth.invalid")  # each logged, with the address
    assert all("127.0.0.1" in m and "guess" not in m for m in refusals)  # never the key


def validator(doc: dict[str, Any], name: str) -> Any:
    """A JSON Schema validator for one of the document's components (OpenAPI 3.1 schemas
    are JSON Schema 2020-12; `#/components/...` resolves against this wrapper)."""
    import jsonschema  # type: ignore[import-untyped]

    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


async def make_recording(service: Service, call_id: str) -> None:
    """A real WEBM (ffmpeg's test pattern) finalized by the service's own worker."""
    folder = service.settings.recordings_path / "2026" / "01" / "02" / call_id
    folder.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:d=1",
        "-c:v", "libvpx", str(folder / "pat-1.webm"))
    assert await proc.wait() == 0
    await service.app[RECORDINGS].finalize(folder, {
        "id": call_id, "kind": "consultation", "state": "ended", "createdAt": time.time(),
        "participants": [{"id": "pat-1", "name": "P", "role": "patient"}],
        "recordings": ["pat-1.webm"]})


@pytest.mark.timeout(scaled(120))  # a schemathesis run of some 500 requests
async def test_every_route_is_in_the_openapi_document_and_answers_match_it(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any,
    http: aiohttp.ClientSession
) -> None:
    """Every route documented; real requests and answers validate against the document;
    schemathesis, given real ids for every path, finds no 5xx and no answer off-schema."""
    import re as regex

    async with run_receiver("s" * 32) as receiver, run_service(
            tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",), env={
                "TELEMED_WEBHOOKS_ENDPOINTS": receiver.url,
                "TELEMED_WEBHOOKS_SECRET": "s" * 32}) as service:
        async with http.get(f"{service.url}/api/v1/openapi.json") as r:
            doc = await r.json()
        routes = {(route.method.lower(), regex.sub(r"\{(\w+)\}", r"{\1}",
                                                   route.resource.canonical))
                  for route in service.app.router.routes()
                  if route.resource is not None
                  and route.resource.canonical.startswith("/api/v1/")
                  and route.method != "HEAD"} - {("get", "/api/v1/openapi.json")}
        documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        assert routes == documented

        validator(doc, "NewCall").validate(CONSULTATION)
        status, created = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
        assert status == 201
        validator(doc, "CreatedCall").validate(created)
        event = await receiver.wait_for("call.created", created["id"])
        async with http.get(f"{service.url}/api/v1/webhooks/events/{event['id']}",
                            headers=AUTH) as r:
            validator(doc, "WebhookEvent").validate(await r.json())
        async with http.get(f"{service.url}/api/v1/calls/{created['id']}",
                            headers=AUTH) as r:
            validator(doc, "Call").validate(await r.json())
        recorded = uuid.uuid4().hex
        await make_recording(service, recorded)
        async with http.get(f"{service.url}/api/v1/recordings/{recorded}", headers=AUTH) as r:
            meta = await r.json()
        validator(doc, "Recording").validate(meta)
        assert meta["state"] == "verified", meta

        config = tmp_path / "schemathesis.toml"
        config.write_text(f"""
[[operations]]
include-path-regex = '^/api/v1/recordings/[{{]call_id[}}]'
parameters = {{ "path.call_id" = "{recorded}", "path.name" = "pat-1.webm" }}

[[operations]]
include-path = "/api/v1/webhooks/events/{{event_id}}"
parameters = {{ "path.event_id" = "{event['id']}" }}

[[operations]]
include-path-regex = '^/api/v1/calls/[{{]call_id[}}]'
parameters = {{ "path.call_id" = "{created['id']}" }}
""")
        env = {**__import__("os").environ, "PYTHONWARNINGS": "ignore"}
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
            f"{service.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {API_KEY}",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples", "25", "--generation-deterministic", "--phases",
            "examples,coverage,fuzzing",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            cwd=tmp_path)  # its cache goes there, not into the checkout
        out, _ = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, text[-4000:]
        assert f"Tested: {len(documented)}" in text, text[-3000:]
        # The ids given above reach every operation's real work; only a random participant
        # for /tokens may keep finding nobody.
        warnings = text.partition(" WARNINGS ")[2].partition(" SUMMARY ")[0]
        assert not regex.findall(r"- \w+ /api/v1/(?!calls/\{call_id\}/tokens)\S+",
                                 warnings.partition("Schema validation mismatch")[0]), warnings


async def test_the_call_events_journal_is_private(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """The journal of call events (names, metadata) is 0600 in a 0700 data folder."""
    status, _ = await post(http, f"{service.url}/api/v1/calls", CONSULTATION)
    assert status == 201
    data = service.settings.data_path
    assert (data / "call-events.journal").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
