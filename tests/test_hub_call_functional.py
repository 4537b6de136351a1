"""Calls through the hub: aiortc participants, the embedded media server, real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import ServerManager
from signaling.call import CallKind, CallState, FailureReason
from tests.hub_fixtures import CallClient, ProtocolError, run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.services import RedisServer


async def test_a_consultation_is_live_recorded_and_ends_cleanly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        hub = service.hub
        call = hub.create_call(CallKind.CONSULTATION, [("pat-1", "Anna P.", "patient"),
                                                      ("doc-1", "Dr. Ivanov", "doctor")])
        patient = CallClient(service, service.token(call.id, "pat-1", role="patient"))
        doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor"))
        try:
            await asyncio.gather(patient.connect(), doctor.connect())
            joined = await patient.join()
            assert joined["recording"] is True
            assert [p["id"] for p in joined["participants"]] == ["doc-1"]
            await doctor.join()
            await asyncio.gather(patient.publish(), doctor.publish())
            await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
            await patient.wait_event("callLive")
            await doctor.wait_event("callLive")
            assert call.state is CallState.LIVE
            assert patient.received["doc-1"]["video"] >= 5
            assert doctor.received["pat-1"]["audio"] >= 5
            assert (await patient.wait_event("recording"))["state"] == "on"

            await asyncio.sleep(1.5)  # some recorded media, the point of the checks below
            with pytest.raises(ProtocolError) as info:
                await patient.request("end")
            assert info.value.code == "call.not_allowed"
            await doctor.request("end")
            await patient.wait_event("callEnded")
        finally:
            await asyncio.gather(patient.close(), doctor.close())
        assert call.state is CallState.ENDED
        files = sorted(service.settings.recordings_path.rglob("*.webm"))
        assert [f.name for f in files] == ["doc-1.webm", "pat-1.webm"]
        for f in files:
            info = await ffprobe(f)
            assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
            assert float(info["format"]["duration"]) > 1.0
        async with KurentoClient(kms_url) as kc:
            assert await ServerManager(kc).get_pipelines() == []
        timeline = [e["event"] for e in call.timeline.as_list()]
        assert "recording" in timeline and "client.mediaReceived" in timeline


async def test_a_peer_whose_ice_never_succeeds_fails_the_call_with_no_media(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        watchdog_timeout=1.5) as service:
        hub = service.hub
        call = hub.create_call(CallKind.CONSULTATION, [("pat-2", "P", "patient"),
                                                      ("doc-2", "D", "doctor")])
        patient = CallClient(service, service.token(call.id, "pat-2"))
        # Its candidates are all mDNS names (dropped by the hub) and it ignores ours:
        # ICE cannot start, media never flows, and nothing in WebRTC ever gives up.
        patient.mdns_candidates = True
        patient.strip_remote_candidates = True
        try:
            await patient.connect()
            await patient.join()
            offer_started = asyncio.get_running_loop().time()
            pc_task = asyncio.create_task(patient.publish())
            failed = await patient.wait_event("callFailed", timeout=10)
            elapsed = asyncio.get_running_loop().time() - offer_started
            await pc_task
        finally:
            await patient.close()
        assert failed["reason"] == "no-media"
        assert "pat-2" in failed["detail"] and "ICE" in failed["detail"]
        assert call.failure is FailureReason.NO_MEDIA
        assert 1.5 <= elapsed < 5.0
        async with KurentoClient(kms_url) as kc:
            assert await ServerManager(kc).get_pipelines() == []
        assert hub.runtime == {}
        # No media reached the recorder, so there is nothing to keep; whatever exists is whole.
        for recording in service.settings.recordings_path.rglob("*.webm"):
            await ffprobe(recording)
        drops = [e for e in call.timeline.as_list() if e["event"] == "candidates-dropped"]
        assert drops and set(drops[0]["reasons"]) == {"mdns"}
