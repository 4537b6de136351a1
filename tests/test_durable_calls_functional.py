"""Booked calls outlive the service: a restart keeps them, their links still open them, and a
call nobody joins expires on its own and gives back its TURN leases. Real redis-server, the
embedded media server as its own process, aiortc participants."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from cluster.ownership import NodeLease
from mis.history import STORE, CallStore
from signaling.call import CallState, FailureReason
from signaling.events import CallEvent
from telemed.recovery import expire_booked, expiry_due, recover_unfinished
from tests.helpers import scaled
from tests.hub_fixtures import API_KEY, CallClient, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Leases in Redis for a TURN server nobody contacts: the expiry test carries no media.
TURN = {"turn_urls": ("turn:127.0.0.1:3478",), "turn_secrets": ("durable-test-secret",)}


async def book(service: Service, http: aiohttp.ClientSession, *, ends_in: float
               ) -> dict[str, Any]:
    now = time.time()
    body = {"kind": "consultation",
            "participants": [{"id": "pat-1", "name": "Anna", "role": "patient"},
                             {"id": "doc-1", "name": "Dr. I", "role": "doctor"}],
            "schedule": {"start": now, "end": now + ends_in}}
    async with http.post(f"{service.url}/api/v1/calls", json=body, headers=AUTH) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def stored(service: Service, http: aiohttp.ClientSession, call_id: str
                 ) -> dict[str, Any]:
    async with http.get(f"{service.url}/api/v1/calls/{call_id}", headers=AUTH) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def test_an_unjoined_call_expires_after_its_window_and_returns_its_leases(
        tmp_path: Path, redis_server: RedisServer, redis_client: Any) -> None:
    """A booked call nobody joins fails `expired` once its window (plus the configured
    overrun) is over, the hooks hear it (the MIS gets call.failed), and the TURN lease its
    patient took on the pre-call page goes back to the pool."""
    env = {"TELEMED_CALLS_EXPIRY_INTERVAL": "0.05", "TELEMED_CALLS_SCHEDULE_OVERRUN": "0"}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env, **TURN) as service, aiohttp.ClientSession() as http:
        heard: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        service.hub.hooks.append(lambda event, call, data: heard.put_nowait((event, data)))
        booked = await book(service, http, ends_in=scaled(1.0))
        patient_token = booked["participants"][0]["token"]
        async with http.post(f"{service.url}/precheck/ice",
                             json={"token": patient_token}) as r:
            assert r.status == 200 and (await r.json())["iceServers"]
        turn = service.hub.turn
        assert turn is not None and await turn.in_use() == 1
        event, data = await asyncio.wait_for(heard.get(), scaled(10))
        while event != CallEvent.FAILED:
            event, data = await asyncio.wait_for(heard.get(), scaled(10))
        assert data["reason"] == FailureReason.EXPIRED.value
        assert await turn.in_use() == 0
        await service.app_sink_settled()
        after = await stored(service, http, booked["id"])
        assert (after["state"], after["failure"]) == ("failed", "expired")
        async with http.post(f"{service.url}/precheck/ice",
                             json={"token": patient_token}) as r:
            assert (r.status, (await r.json())["code"]) == (409, "call.ended")


async def test_only_calls_nobody_is_in_expire(tmp_path: Path,
                                              redis_server: RedisServer) -> None:
    """Past their windows, a booked call nobody opened expires and one whose doctor is in
    it (an appointment that runs over) does not; the expiry round runs with its clock set
    past both windows."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service, \
            aiohttp.ClientSession() as http:
        empty = await book(service, http, ends_in=60)
        attended = await book(service, http, ends_in=60)
        doctor = CallClient(service, attended["participants"][1]["token"])
        try:
            await doctor.connect()
            await doctor.join()
            expired = await expire_booked(
                service.hub, service.app[STORE], service.hub.turn,
                now=time.time() + 61 + service.settings.calls.schedule_overrun,
                overrun=service.settings.calls.schedule_overrun,
                idle=service.settings.calls.idle_expiry)
            assert expired == [empty["id"]]
            assert service.hub.calls[attended["id"]].state is CallState.CONNECTING
            assert service.hub.calls[empty["id"]].failure is FailureReason.EXPIRED
        finally:
            await doctor.close()


def test_expiry_is_due_after_the_window_plus_overrun_or_after_the_idle_time() -> None:
    """A scheduled call is due at its window's end plus the overrun; an unscheduled one at
    its creation plus the idle time."""
    scheduled = {"createdAt": 100.0, "schedule": {"start": 200.0, "end": 300.0}}
    assert expiry_due(scheduled, overrun=50, idle=1000) == 350.0
    assert expiry_due({"createdAt": 100.0, "schedule": None}, overrun=50, idle=1000) == 1100.0


async def test_a_starting_node_leaves_the_begun_calls_of_a_living_node_alone(
    redis_client: Any,
) -> None:
    """Three live calls in Redis: one of this node (restarted), one of a node whose
    heartbeat is fresh, one of a node not heard of. Start-up recovery (takeover off) fails
    this node's and the dead node's, never the living node's; with takeover on it keeps
    them all, and `orphaned` picks the same two for adoption."""
    store = CallStore(redis_client)
    me = NodeLease(redis_client, "node-a", ttl=5)
    other = NodeLease(redis_client, "node-b", ttl=5)
    await me.beat()
    await other.beat()
    now = time.time()
    snaps = {owner: {"id": f"call-{owner}", "kind": "consultation", "state": "live",
                     "node": owner, "createdAt": now, "liveAt": now, "participants": [],
                     "timeline": []}
             for owner in ("node-a", "node-b", "node-c")}
    for snap in snaps.values():
        await store.save(snap)

    adoptable = [o for o, snap in snaps.items() if await me.orphaned(snap)]
    assert adoptable == ["node-a", "node-c"]
    kept = await recover_unfinished(store, None, None, take_over=True, orphaned=me.orphaned)
    assert kept == []
    closed = await recover_unfinished(store, None, None, orphaned=me.orphaned)
    assert sorted(s["id"] for s in closed) == ["call-node-a", "call-node-c"]
    assert (await store.get("call-node-b"))["state"] == "live"
    await other.stop()  # a clean stop frees its calls at once
    assert await me.orphaned(snaps["node-b"])


async def test_a_booked_call_whose_patient_was_refused_turn_fails_turn_exhausted(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """A TURN pool of one: the first booked call's patient holds the lease, the second's is
    refused on the pre-call page. Past their windows, the first expires `expired` (nobody
    came) and the second fails `turn-exhausted`, its detail naming who was refused, so the
    MIS can tell a full pool from a no-show."""
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "1",
           "TELEMED_TURN_URLS": TURN["turn_urls"][0],
           "TELEMED_TURN_SECRETS": TURN["turn_secrets"][0]}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env, **TURN) as service, aiohttp.ClientSession() as http:
        failed: dict[str, dict[str, Any]] = {}
        service.hub.hooks.append(lambda event, call, data: failed.__setitem__(call.id, data)
                                 if event == CallEvent.FAILED else None)
        first = await book(service, http, ends_in=60)
        second = await book(service, http, ends_in=60)
        answers = []
        for booked in (first, second):
            async with http.post(f"{service.url}/precheck/ice", json={
                    "token": booked["participants"][0]["token"]}) as r:
                answers.append((r.status, (await r.json()).get("code")))
        assert answers == [(200, None), (503, "turn.exhausted")]
        expired = await expire_booked(
            service.hub, service.app[STORE], service.hub.turn,
            now=time.time() + 61 + service.settings.calls.schedule_overrun,
            overrun=service.settings.calls.schedule_overrun,
            idle=service.settings.calls.idle_expiry)
        assert sorted(expired) == sorted([first["id"], second["id"]])
        assert failed[first["id"]]["reason"] == FailureReason.EXPIRED.value
        assert failed[second["id"]]["reason"] == FailureReason.TURN_EXHAUSTED.value
        assert "pat-1" in failed[second["id"]]["detail"]
        await service.app_sink_settled()
        after = await stored(service, http, second["id"])
        assert (after["state"], after["failure"]) == ("failed", "turn-exhausted")
