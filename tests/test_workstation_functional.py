"""The doctor's workstation over HTTP on real services and a real redis-server: every node
lists every call from the shared history, the per-person index stays true to the calls'
summaries (fenced writes included), appointments are ordered and shown in the hospital's
time zone, and workstation links come from the API and from `telemed workstation-link`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import redis.asyncio as aioredis

from mis.history import CallStore
from mis.redis_scripts import OWNER
from mis.staff_calls import BACKFILLED, open_calls_of
from telemed.settings import SettingsError, load_settings
from tests.helpers import within
from tests.hub_fixtures import API_KEY, JWT_SECRET, CallClient, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer, run_redis
from tests.test_api_redis_hang_functional import frozen
from tests.test_nodes_inprocess_functional import two_services
from web.i18n import STRINGS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROW = re.compile(r'data-call="([^"]+)"')


def who(prefix: str) -> str:
    """A participant id no other test in the session shares (the Redis is the session's)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def book(http: aiohttp.ClientSession, service: Service, participants: list[dict[str, str]],
               *, kind: str = "consultation", schedule: dict[str, float] | None = None
               ) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "participants": participants}
    if schedule is not None:
        body["schedule"] = schedule
    async with http.post(f"{service.url}/api/v1/calls", json=body, headers=AUTH) as r:
        assert r.status == 201, await r.text()
        created: dict[str, Any] = await r.json()
        return created


async def desk(http: aiohttp.ClientSession, service: Service, subject: str,
               role: str = "doctor") -> str:
    token = service.token("workstation", subject, role=role, name="Dr. " + subject)
    async with http.get(f"{service.url}/workstation/{token}") as r:
        assert r.status == 200
        return await r.text()


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as svc:
        yield svc


async def test_a_call_booked_on_node_a_is_listed_on_node_bs_workstation_with_a_working_link(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A call the MIS booked through node A, which node B never loaded, is on B's workstation
    page, and the doctor's join link from that page opens the call page and joins the call."""
    doctor, patient = who("doc"), who("pat")
    async with two_services(tmp_path, redis_server) as (a, b), aiohttp.ClientSession() as http:
        call = await book(http, a, [{"id": patient, "name": "Анна", "role": "patient"},
                                    {"id": doctor, "name": "Д-р Иванов", "role": "doctor"}])
        assert call["id"] not in b.hub.calls  # only Redis knows it on B
        page = await desk(http, b, doctor)
        assert ROW.findall(page) == [call["id"]]
        assert "Анна" in page
        (link,) = re.findall(r'href="(http[^"]+/join/([^"]+))"', page)
        async with http.get(link[0]) as r:
            assert r.status == 200 and 'data-role="doctor"' in await r.text()
        client = CallClient(b, link[1])
        await client.connect()
        try:
            joined = await client.join()
            assert joined["you"]["id"] == doctor
        finally:
            await client.close()
        # Another doctor's workstation on either node does not list it.
        assert call["id"] not in await desk(http, a, who("doc"))


async def test_the_index_follows_ends_removals_stale_entries_and_calls_booked_before_it(
    service: Service, redis_server: RedisServer
) -> None:
    """Ended calls and calls the doctor was removed from leave the workstation; an index
    entry left pointing at an ended call is dropped on read; calls recorded before the index
    existed are found (backfilled once)."""
    doctor, consultant = who("doc"), who("fd")
    staff = [{"id": doctor, "name": "D", "role": "doctor"}]
    async with aiohttp.ClientSession() as http:
        ended = await book(http, service, [{"id": who("pat"), "name": "P", "role": "patient"},
                                           *staff])
        left = await book(http, service, [{"id": who("pat"), "name": "P", "role": "patient"},
                                          *staff])
        referral = await book(http, service, [*staff, {"id": consultant, "name": "C",
                                                       "role": "consultant"}], kind="referral")
        assert sorted(ROW.findall(await desk(http, service, doctor))) == sorted(
            [ended["id"], left["id"], referral["id"]])
        async with http.post(f"{service.url}/api/v1/calls/{ended['id']}/end",
                             headers=AUTH) as r:
            assert r.status == 200
        async with http.delete(f"{service.url}/api/v1/calls/{left['id']}/participants/"
                               f"{doctor}", headers=AUTH) as r:
            assert r.status == 200
        assert ROW.findall(await desk(http, service, doctor)) == [referral["id"]]
        assert ROW.findall(await desk(http, service, consultant, "consultant")) == [
            referral["id"]]
        redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            key = f"telemed:calls:staff:{doctor}"
            # As a write another node made before it was fenced off would leave it.
            await redis.sadd(key, ended["id"])
            assert ROW.findall(await desk(http, service, doctor)) == [referral["id"]]
            assert await redis.smembers(key) == {referral["id"]}
            # As an upgrade finds it: calls in the history, no index, no marker.
            await redis.delete(key, f"telemed:calls:staff:{consultant}", BACKFILLED)
            assert ROW.findall(await desk(http, service, doctor)) == [referral["id"]]
            assert ROW.findall(await desk(http, service, consultant, "consultant")) == [
                referral["id"]]
            assert await redis.exists(BACKFILLED)
        finally:
            await redis.aclose()


def far_zone(now: datetime) -> ZoneInfo:
    """A zone at least 5 h from UTC where it is between 03:00 and 21:00 now, so that the
    appointments below fall on the zone's today whenever the test runs."""
    for name in ("Pacific/Kiritimati", "Asia/Tokyo", "Asia/Kolkata", "Pacific/Pago_Pago",
                 "America/Los_Angeles", "America/Sao_Paulo"):
        zone = ZoneInfo(name)
        local = now.astimezone(zone)
        offset = local.utcoffset() or timedelta()
        if abs(offset) >= timedelta(hours=5) and 3 <= local.hour < 21:
            return zone
    raise AssertionError(f"no zone fits {now}")  # the six cover every hour of the day


async def test_appointments_are_ordered_and_shown_in_the_hospitals_time_zone(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """With http.time_zone far from UTC: today's appointments by start, then the unbooked
    call, then tomorrow's; each time is the zone's wall clock, tomorrow's with its date."""
    now = datetime.now(ZoneInfo("UTC"))
    zone = far_zone(now)
    local = now.astimezone(zone)
    doctor = who("doc")

    def at(moment: datetime) -> dict[str, float]:
        return {"start": moment.timestamp(), "end": (moment + timedelta(minutes=30)).timestamp()}

    tomorrow = (local + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    slots = {"late": at(local + timedelta(hours=2)), "tomorrow": at(tomorrow),
             "early": at(local - timedelta(minutes=20)), "soon": at(local + timedelta(hours=1))}
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_HTTP_TIME_ZONE": zone.key}) as service, \
            aiohttp.ClientSession() as http:
        ids: dict[str, str] = {}
        # Booked in an order unlike the appointments', the unbooked call in the middle.
        for name in ("late", "tomorrow", "unbooked", "early", "soon"):
            patient = {"id": who("pat"), "name": f"Patient {name}", "role": "patient"}
            call = await book(http, service, [patient, {"id": doctor, "name": "D",
                                                        "role": "doctor"}],
                              schedule=slots.get(name))
            ids[call["id"]] = name
        page = await desk(http, service, doctor)
    assert [ids[c] for c in ROW.findall(page)] == ["early", "soon", "late", "unbooked",
                                                   "tomorrow"]
    shown = re.findall(r'<time datetime="([^"]+)">(\d\d:\d\d)</time>', page)
    for (iso, text), name in zip(shown, ["early", "soon", "late"], strict=False):
        start = datetime.fromtimestamp(slots[name]["start"], zone)
        assert text == start.strftime("%H:%M") and iso.startswith(start.strftime("%Y-%m-%d"))
        assert text != datetime.fromtimestamp(slots[name]["start"], ZoneInfo("UTC")).strftime(
            "%H:%M")  # not UTC's wall clock
    assert len(shown) == 5 and shown[4][1] == "10:00"
    assert tomorrow.strftime("%d.%m") in page and zone.key in page


def test_a_time_zone_that_is_not_one_is_refused_naming_the_setting() -> None:
    """http.time_zone must be an IANA zone name: anything else stops start-up with a
    message that names the setting."""
    for bad in ("Mars/Olympus", "UTC+3", "../etc/passwd", ""):
        with pytest.raises(SettingsError, match=r"http\.time_zone"):
            load_settings(env={"TELEMED_HTTP_TIME_ZONE": bad})
    assert load_settings(env={"TELEMED_HTTP_TIME_ZONE": "Asia/Vladivostok"}
                         ).http.time_zone == "Asia/Vladivostok"


async def test_the_api_mints_a_workstation_link_that_lists_the_doctors_calls(
    service: Service
) -> None:
    """POST /api/v1/workstation-links answers 201 with a link (and token, expiresAt) whose
    page lists the doctor's calls; a patient role is 422 `request.invalid` naming `role`, a
    bad ttl names `ttl`, and no or a wrong key is 401 `auth.invalid`."""
    doctor = who("doc")
    url = f"{service.url}/api/v1/workstation-links"
    async with aiohttp.ClientSession() as http:
        call = await book(http, service, [{"id": who("pat"), "name": "Анна", "role": "patient"},
                                          {"id": doctor, "name": "D", "role": "doctor"}])
        body = {"id": doctor, "name": "Д-р Иванов", "role": "doctor"}
        async with http.post(url, json=body, headers=AUTH) as r:
            assert r.status == 201
            made = await r.json()
        assert made["link"] == f"{service.url}/workstation/{made['token']}"
        ttl = service.settings.auth.token_ttl
        assert abs(made["expiresAt"] - (datetime.now().timestamp() + ttl)) < 60
        async with http.get(made["link"]) as r:
            assert r.status == 200
            page = await r.text()
        assert ROW.findall(page) == [call["id"]] and "Д-р Иванов" in page
        async with http.post(url, json={**body, "ttl": 3600}, headers=AUTH) as r:
            assert r.status == 201
            assert abs((await r.json())["expiresAt"] - datetime.now().timestamp() - 3600) < 60
        for bad, field in (({**body, "role": "patient"}, "role"), ({**body, "ttl": 10}, "ttl"),
                           ({**body, "id": "no spaces"}, "id"), ({"role": "doctor"}, "id")):
            async with http.post(url, json=bad, headers=AUTH) as r:
                assert r.status == 422
                error = await r.json()
                assert (error["code"], error["field"]) == ("request.invalid", field)
                assert set(error) == {"code", "field", "message"} and error["message"]
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.post(url, json=body, headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["code"] == "auth.invalid"


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telemed", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await within(proc.communicate(), 60, "telemed workstation-link")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_prints_a_link_that_opens_the_doctors_workstation(
    service: Service, tmp_path: Path
) -> None:
    """`telemed workstation-link` prints a link signed with the configured key (or the one
    kept in the data folder) that opens the workstation (200) listing that doctor's calls;
    a patient role is refused."""
    doctor = who("doc")
    port = service.url.rsplit(":", 1)[1]
    data = tmp_path / "cli-data"
    data.mkdir()
    # The data folder of a service that generated its own key (here, the test services' key).
    (data / "secrets.json").write_text(json.dumps(
        {"jwt_secret": JWT_SECRET, "turn_secret": "t" * 32, "api_key": "k" * 32}))
    base = {"TELEMED_HTTP_PORT": port, "TELEMED_DATA_DIR": str(data)}
    async with aiohttp.ClientSession() as http:
        call = await book(http, service, [{"id": who("pat"), "name": "Олег", "role": "patient"},
                                          {"id": doctor, "name": "D", "role": "doctor"}])
        for env in ({**base, "TELEMED_AUTH_JWT_SECRET": JWT_SECRET}, base):
            code, out, err = await run_cli("workstation-link", "--id", doctor, "--name",
                                           "Д-р Смирнов", "--role", "doctor", env=env)
            assert code == 0, err
            link = out.strip()
            assert link.startswith(f"{service.url}/workstation/")
            async with http.get(link) as r:
                assert r.status == 200
                page = await r.text()
            assert ROW.findall(page) == [call["id"]] and "Д-р Смирнов" in page
        code, out, _ = await run_cli("workstation-link", "--id", doctor, "--name", "D",
                                     "--role", "doctor", "--json", env=base)
        assert code == 0 and set(json.loads(out)) == {"link", "token", "expiresAt"}
        code, out, err = await run_cli("workstation-link", "--id", doctor, "--name", "D",
                                       "--role", "patient", env=base)
        assert code == 2 and out == "" and "--role" in err


async def test_a_write_the_fence_refuses_leaves_the_owners_call_on_the_workstation(
    redis_client: Any
) -> None:
    """A stale node's write of a call it no longer owns (failed, under an older epoch) is
    refused by the fence and leaves the doctor's index, and the set of open calls the
    expiry round reads, as the owner's summary says: open."""
    doctor, call_id = who("doc"), uuid.uuid4().hex
    store = CallStore(redis_client)
    snap = {"id": call_id, "kind": "consultation", "state": "created", "epoch": 2,
            "createdAt": time.time(), "participants": [
                {"id": who("pat"), "name": "P", "role": "patient", "state": "invited"},
                {"id": doctor, "name": "D", "role": "doctor", "state": "invited"}]}
    await redis_client.hset(f"{OWNER}{call_id}", "epoch", 2)
    await store.save(snap)  # the owner's
    assert [c["id"] for c in await open_calls_of(redis_client, doctor)] == [call_id]
    refused = await store.save_many([({**snap, "state": "failed", "epoch": 1}, 0, [])])
    assert refused == {call_id}
    assert await redis_client.smembers(f"telemed:calls:staff:{doctor}") == {call_id.encode()}
    assert [c["id"] for c in await open_calls_of(redis_client, doctor)] == [call_id]
    assert await redis_client.sismember("telemed:calls:open", call_id)
    await store.save({**snap, "state": "ended"})  # the owner ends it: off the list
    assert await open_calls_of(redis_client, doctor) == []
    assert not await redis_client.sismember("telemed:calls:open", call_id)
    assert not await redis_client.exists(f"telemed:calls:staff:{doctor}")


async def test_a_hung_redis_gets_a_503_page_with_a_sentence_then_the_list_again(
    tmp_path: Path
) -> None:
    """While its Redis is stopped (SIGSTOP) the workstation answers 503 with the
    "cannot be read" sentence within the Redis timeout; once it runs again, the list."""
    doctor = who("doc")
    with run_redis(tmp_path / "redis") as redis:
        async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
                run_service(tmp_path, redis.url, (kms_url,)) as service, \
                aiohttp.ClientSession() as http:
            call = await book(http, service, [{"id": who("pat"), "name": "P",
                                               "role": "patient"},
                                              {"id": doctor, "name": "D", "role": "doctor"}])
            token = service.token("workstation", doctor, role="doctor")
            with frozen(redis.pid):
                async with http.get(f"{service.url}/workstation/{token}") as r:
                    assert r.status == 503
                    assert STRINGS["ru"]["ws_unavailable"] in await r.text()
            assert ROW.findall(await desk(http, service, doctor)) == [call["id"]]
