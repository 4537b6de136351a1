"""Webhooks to a real receiver on loopback, through real Redis: signed, ordered, retried,
and kept across a SIGKILL of the service."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mis.webhooks import backoff, sign, verify_signature
from signaling.call import CallKind
from telemed.settings import SettingsError, load_settings
from tests.hub_fixtures import API_KEY, CallClient, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer, free_port
from tests.test_cli_functional import poll_ready
from tests.webhook_receiver import run_receiver

SECRET = "hook-secret-" + "z" * 20
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def hook_env(url: str, extra: str = "") -> dict[str, str]:
    return {"TELEMED_WEBHOOKS_ENDPOINTS": f"{url} {extra}".strip(),
            "TELEMED_WEBHOOKS_SECRET": SECRET, "TELEMED_WEBHOOKS_RETRY_BASE": "0.05",
            "TELEMED_WEBHOOKS_RETRY_CAP": "0.2", "TELEMED_WEBHOOKS_CLAIM_TIMEOUT": "1"}


def test_signatures_verify_only_with_the_key_the_body_and_a_fresh_time() -> None:
    """A webhook signature verifies only with its key, its exact body and a fresh timestamp."""
    body = b'{"id":"1"}'
    header = sign(SECRET, body, 1000.0)
    assert verify_signature(SECRET, header, body, now=1010.0)
    assert not verify_signature("other", header, body, now=1010.0)
    assert not verify_signature(SECRET, header, body + b" ", now=1010.0)
    assert not verify_signature(SECRET, header, body, now=2000.0)  # replayed later
    assert not verify_signature(SECRET, "garbage", body, now=1000.0)


def test_retry_delays_double_up_to_the_cap() -> None:
    """Webhook retry delays double from the first delay up to the cap."""
    assert [backoff(n, 1.0, 300.0) for n in (1, 2, 3, 9, 10, 500)] == [
        1.0, 2.0, 4.0, 256.0, 300.0, 300.0]


def test_endpoints_without_a_secret_or_with_unknown_events_stop_start_up() -> None:
    """Webhook endpoints without a secret, or filtering on no known event, stop start-up."""
    with pytest.raises(SettingsError, match=r"webhooks\.secret"):
        load_settings(env={"TELEMED_WEBHOOKS_ENDPOINTS": "http://mis/hook"})
    with pytest.raises(SettingsError, match="matches no event"):
        load_settings(env={"TELEMED_WEBHOOKS_ENDPOINTS": "http://mis/hook call.exploded",
                           "TELEMED_WEBHOOKS_SECRET": SECRET})


async def test_a_call_sends_its_webhooks_in_order_signed_and_filtered(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Created through the API, joined by two aiortc peers, ended: every event arrives
    once, in order, signed; an endpoint that filters gets only what it asked for."""
    async with run_receiver(SECRET) as everything, run_receiver(SECRET) as failures, \
            run_receiver(SECRET) as people, \
            run_mediaserver(recordings_root=tmp_path) as (kms_url, _):
        env = hook_env(everything.url)
        env["TELEMED_WEBHOOKS_ENDPOINTS"] += (f",{failures.url} call.failed"
                                              f",{people.url} participant.*")
        async with run_service(tmp_path, redis_server.url, (kms_url,), env=env) as service, \
                aiohttp.ClientSession() as http:
            async with http.post(f"{service.url}/api/v1/calls", headers=AUTH, json={
                    "kind": "consultation", "metadata": {"visit": "V-77"},
                    "participants": [{"id": "pat-1", "name": "P", "role": "patient"},
                                     {"id": "doc-1", "name": "D", "role": "doctor"}]}) as r:
                assert r.status == 201
                created = await r.json()
            call_id = created["id"]
            tokens = {p["id"]: p["token"] for p in created["participants"]}
            patient = CallClient(service, tokens["pat-1"])
            doctor = CallClient(service, tokens["doc-1"])
            try:
                await asyncio.gather(patient.connect(), doctor.connect())
                await patient.join()
                await doctor.join()
                await asyncio.gather(patient.publish(), doctor.publish())
                await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
                await doctor.wait_event("callLive")
                await patient.request("leave")
                await doctor.wait_event("participantLeft")
                await doctor.request("leave")  # the last one out ends the call
            finally:
                await asyncio.gather(patient.close(), doctor.close())
            ended = await everything.wait_for("call.ended", call_id)
            await everything.wait_for("recording.ready", call_id)
            assert everything.events(call_id) == [
            "call.created", "participant.joined", "participant.joined", "call.live",
            "participant.left", "participant.left", "call.ended", "recording.ready"]
        assert ended["data"]["call"]["metadata"] == {"visit": "V-77"}
        assert ended["data"]["call"]["duration"] > 0
        # Loopback peers reach the media server directly: host (or peer-reflexive, when a
        # check arrives before the candidate it came from), over UDP.
        networks = ended["data"]["call"]["networks"]
        assert set(networks) == {"pat-1", "doc-1"}, networks
        assert all(n and set(n) <= {"host/udp", "prflx/udp"} for n in networks.values())
        assert [p.endswith(".webm") for p in ended["data"]["recordings"]] == [True, True]
        times = [e["time"] for e in everything.received]
        assert times == sorted(times)
        assert everything.bad_signatures == failures.bad_signatures == 0
        assert len({e["id"] for e in everything.received}) == len(everything.received)
        assert failures.received == []  # it asked for call.failed only
        assert [(e["event"], e["data"]["participant"]) for e in people.received][2:] == [
            ("participant.left", "pat-1"), ("participant.left", "doc-1")]
        assert people.events(call_id)[:2] == ["participant.joined"] * 2


async def test_a_receiver_that_fails_five_times_gets_every_event_once_in_order(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """A receiver that fails five times gets every event once, in order, with capped backoff."""
    async with run_receiver(SECRET) as receiver:
        receiver.fail_next = 5
        async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                               env=hook_env(receiver.url)) as service:
            calls = [service.hub.create_call(CallKind.CONSULTATION, [
                ("p", "P", "patient"), ("d", "D", "doctor")]) for _ in range(3)]
            for call in calls:
                await service.hub.end(call.id)
            await receiver.wait_for("call.ended", calls[-1].id)
            async with aiohttp.ClientSession() as http, http.get(
                    f"{service.url}/api/v1/webhooks/events/{receiver.received[0]['id']}",
                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                log = await r.json()
            async with aiohttp.ClientSession() as http, http.get(
                    f"{service.url}/api/v1/calls/{calls[0].id}/webhooks",
                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                of_call = (await r.json())["events"]
        ids = [c.id for c in calls]
        got = [(e["event"], e["data"]["call"]["id"]) for e in receiver.received]
        assert got == [("call.created", cid) for cid in ids] + [("call.ended", cid) for cid in ids]
        assert receiver.attempts == len(got) + 5
        assert [d["status"] for d in log["deliveries"]] == [500] * 5 + [204]
        assert log["pending"] == []
        assert [e["event"] for e in of_call] == ["call.created", "call.ended"]
        assert of_call[0]["deliveries"] == log["deliveries"]
        # Retries 0.05, 0.1, then capped at 0.2 s (doubling on would wait 0.4 and 0.8 s).
        at = [d["at"] for d in log["deliveries"]]
        gaps = [b - a for a, b in itertools.pairwise(at)]
        assert all(gap >= want * 0.9 for gap, want in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2],
                                                           strict=True)), gaps
        assert gaps[3] + gaps[4] < 1.2, gaps


async def test_events_queued_when_the_service_is_killed_are_delivered_after_restart(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """The service runs as `telemed run` and is SIGKILLed while its receiver is down."""
    hook_port = free_port()
    http_port = free_port()
    api_key = uuid.uuid4().hex
    from telemed.embedded import hash_api_key

    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _):
        env = {**os.environ, **hook_env(f"http://127.0.0.1:{hook_port}/hook"),
               "TELEMED_HTTP_PORT": str(http_port), "TELEMED_DATA_DIR": str(tmp_path / "d"),
               "TELEMED_REDIS_URL": redis_server.url, "TELEMED_MEDIA_KURENTO_URLS": kms_url,
               "TELEMED_TURN_PROVIDER": "none",
               "TELEMED_AUTH_API_KEY_HASHES": hash_api_key(api_key)}
        base = f"http://127.0.0.1:{http_port}"
        auth = {"Authorization": f"Bearer {api_key}"}

        async def start() -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telemed.cli", "run", env=env)
            await poll_ready(f"{base}/readyz", 30)
            return proc

        proc = await start()
        try:
            async with aiohttp.ClientSession() as http:
                created = []
                for _ in range(3):
                    async with http.post(f"{base}/api/v1/calls", headers=auth, json={
                        "kind": "consultation",
                        "participants": [{"id": "p", "name": "P", "role": "patient"},
                                         {"id": "d", "name": "D", "role": "doctor"}]}) as r:
                        assert r.status == 201
                        created.append((await r.json())["id"])
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        async with run_receiver(SECRET, hook_port) as receiver:
            proc = await start()
            try:
                for call_id in created:
                    await receiver.wait_for("call.created", call_id)
                # Booked calls nobody was in outlive the kill: still created, none failed.
                async with aiohttp.ClientSession() as http:
                    for call_id in created:
                        async with http.get(f"{base}/api/v1/calls/{call_id}",
                                            headers=auth) as r:
                            assert (await r.json())["state"] == "created"
            finally:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
        assert [e["data"]["call"]["id"] for e in receiver.received
                if e["event"] == "call.created"] == created
        assert not [e for e in receiver.received if e["event"] == "call.failed"]


async def test_events_heard_while_redis_is_away_survive_in_the_journal_and_arrive_once(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Events heard while Redis is away wait in the journal and are queued once, even replayed."""
    import redis.asyncio as aioredis

    from mis.history import CallStore, EventSink
    from mis.webhooks import Endpoint, Outbox
    from signaling.call import Call

    journal = tmp_path / "call-events.journal"
    hook = [Endpoint("http://127.0.0.1:9/hook")]
    call = Call(kind=CallKind.CONSULTATION)
    # Redis unreachable (a port nothing listens on): the events wait, in the journal.
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}",
                                   socket_connect_timeout=0.2)
    away = EventSink(CallStore(dead), Outbox(dead, hook, SECRET), journal=journal,
                     retry_cap=0.05)
    away.start()
    away("call.created", call, {})
    away("call.ended", call, {})
    await away.flush(timeout=0.5)
    await dead.aclose()
    assert len(journal.read_text().splitlines()) == 2

    async def restart() -> Outbox:
        outbox = Outbox(redis_client, hook, SECRET)
        sink = EventSink(CallStore(redis_client), outbox, journal=journal)
        assert sink.replay() == 2
        sink.start()
        await sink.settle()
        await sink.flush()
        return outbox

    outbox = await restart()
    events = await outbox.events_of(call.id)
    assert [e["event"] for e in events] == ["call.created", "call.ended"]
    assert await CallStore(redis_client).get(call.id) is not None
    assert journal.read_text() == ""  # all in Redis: the journal starts afresh
    # A crash after Redis took them but before the journal was emptied replays them:
    # the event ids make that a no-op.
    snap = await CallStore(redis_client).get(call.id)
    journal.write_text("".join(
        json.dumps([e["event"], snap, e["data"], e["id"], e["time"]]) + "\n" for e in events))
    outbox = await restart()
    assert [e["id"] for e in await outbox.events_of(call.id)] == [e["id"] for e in events]
    assert await outbox.pending() == 2  # queued once each for the endpoint, not twice
