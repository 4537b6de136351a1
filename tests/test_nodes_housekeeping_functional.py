"""Two nodes' worth of the service (in-process) on one real redis-server, one embedded
media server and one recordings volume: the second node's start-up (recovery, orphan sweep,
recordings scan), its retention and its webhook outbox do their work on what is theirs to
do and leave the first node's live call alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from mis.history import CallStore
from recordings.catalog import Catalog
from tests.helpers import wait_until
from tests.hub_fixtures import API_KEY, CallClient, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer
from tests.test_recordings_worker_functional import webm
from tests.webhook_receiver import run_receiver

SECRET = "hook-secret-" + "h" * 20
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def node_env(rec: Path, hook: str, **extra: str) -> dict[str, str]:
    return {"TELEMED_RECORDINGS_DIR": str(rec), "TELEMED_WEBHOOKS_ENDPOINTS": hook,
            "TELEMED_WEBHOOKS_SECRET": SECRET, "TELEMED_WEBHOOKS_RETRY_BASE": "0.05",
            "TELEMED_WEBHOOKS_RETRY_CAP": "0.2", "TELEMED_WEBHOOKS_CLAIM_TIMEOUT": "2",
            **extra}


async def test_a_second_node_starting_leaves_the_first_nodes_live_call_alone(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Node B starts while node A's call is live and recording: B fails nothing of it,
    finalizes and purges only the recordings that are over, and the call ends normally
    with each webhook once, in order, and whole recordings."""
    rec = tmp_path / "rec"
    async with run_receiver(SECRET) as receiver, \
            run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path / "a", redis_server.url, (kms_url,),
                        env=node_env(rec, receiver.url)) as node_a, \
            aiohttp.ClientSession() as http:
        async with http.post(f"{node_a.url}/api/v1/calls", headers=AUTH, json={
                "kind": "consultation",
                "participants": [{"id": "pat-1", "name": "P", "role": "patient"},
                                 {"id": "doc-1", "name": "D", "role": "doctor"}]}) as r:
            assert r.status == 201
            created = await r.json()
        call_id = created["id"]
        tokens = {p["id"]: p["token"] for p in created["participants"]}
        patient = CallClient(node_a, tokens["pat-1"])
        doctor = CallClient(node_a, tokens["doc-1"])
        try:
            await asyncio.gather(patient.connect(), doctor.connect())
            await patient.join()
            await doctor.join()
            await asyncio.gather(patient.publish(), doctor.publish())
            await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
            await doctor.wait_event("callLive")
            await receiver.wait_for("call.live", call_id)
            live_folder = next(rec.glob(f"*/*/*/{call_id}"))
            # What B should deal with: a folder a dead node left unfinalized (no call in
            # Redis: over), and a finalized recording past retention.
            stray = rec / "2026" / "01" / "02" / "call-left-over"
            stray.mkdir(parents=True)
            await webm(stray / "pat-1.webm", 1.0)
            old = rec / "2025" / "01" / "02" / "call-old"
            old.mkdir(parents=True)
            (old / "pat-1.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(64))
            await Catalog(rec, redis_client).write(old, {
                "call": "call-old", "createdAt": 1_735_776_000.0, "state": "verified",
                "files": [{"name": "pat-1.webm"}], "composed": None})
            async with run_service(tmp_path / "b", redis_server.url, (kms_url,),
                                   env=node_env(rec, receiver.url,
                                                TELEMED_RECORDINGS_RETENTION_DAYS="0.0001",
                                                # as deployed: B adopts the calls of
                                                # nodes that are gone, not A's
                                                TELEMED_CALLS_TAKE_OVER="true"),
                                   ) as node_b:
                # B's retention and scan ran on what was theirs...
                await wait_until(lambda: not (old / "pat-1.webm").exists(), timeout=20,
                                 describe=lambda: list(old.iterdir()))
                await wait_until(lambda: (Catalog.read(stray) or {}).get("state") in (
                    "verified", "flagged"), timeout=30,
                    describe=lambda: Catalog.read(stray))
                # ...and nothing of A's live call: not failed, not adopted, not finalized.
                snap = await CallStore(redis_client).get(call_id)
                assert snap is not None and snap["state"] == "live", snap
                assert call_id not in node_b.hub.calls
                assert not (live_folder / "metadata.json").exists()
                sizes = {p.name: p.stat().st_size for p in live_folder.glob("*.webm")}
                assert set(sizes) == {"pat-1.webm", "doc-1.webm"}, sizes
                await wait_until(lambda: all(p.stat().st_size > sizes[p.name]
                                             for p in live_folder.glob("*.webm")),
                                 timeout=10, describe=lambda: sizes)  # still recording
                assert "call.failed" not in receiver.events(call_id)
                await patient.request("leave")
                await doctor.wait_event("participantLeft")
                await doctor.request("leave")
                ready = await receiver.wait_for("recording.ready", call_id, timeout=30)
        finally:
            await asyncio.gather(patient.close(), doctor.close())
    assert receiver.events(call_id) == [
        "call.created", "participant.joined", "participant.joined", "call.live",
        "participant.left", "participant.left", "call.ended", "recording.ready"]
    ids = [e["id"] for e in receiver.received]
    assert len(ids) == len(set(ids))
    assert ready["data"]["problems"] == []
    assert sorted(ready["data"]["files"]) == ["doc-1.webm", "pat-1.webm"]
