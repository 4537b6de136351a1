"""Calls through the hub: aiortc participants, the embedded media server, real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import ServerManager
from signaling.call import CallKind, CallState, FailureReason
from tests.helpers import scaled, wait_until
from tests.hub_fixtures import CallClient, ProtocolError, joined_consultation, run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.services import RedisServer, TurnServer


async def test_a_consultation_is_live_recorded_and_ends_cleanly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two aiortc peers go live; only the doctor may end; both are recorded and nothing is left."""
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
        # Every state change, the call's and each participant's, is on the timeline.
        states = [e["state"] for e in call.timeline.as_list() if e["event"] == "state"]
        assert states == ["created", "connecting", "live", "ended"]
        for pid in ("pat-1", "doc-1"):
            moves = [e["state"] for e in call.timeline.as_list()
                     if e["event"] == "participant" and e["participant"] == pid]
            assert moves == ["connecting", "connected", "left"], (pid, moves)


async def test_a_participant_without_a_camera_is_recorded_audio_only_and_the_call_is_live(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """An audio-only publisher still lets the call go live and is recorded as audio only."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        async with joined_consultation(service) as (_, patient, doctor):
            await asyncio.gather(patient.publish(video=False), doctor.publish())
            published = await doctor.wait_event("participantPublished")
            assert published["kinds"] == ["audio"]
            await asyncio.gather(patient.subscribe("doc-1"),
                                 doctor.subscribe("pat-1", kinds=("audio",)))
            await doctor.wait_event("callLive")
            await asyncio.sleep(1.0)  # some recorded media, the point of the checks below
            await doctor.request("end")
        files = {f.name: f for f in service.settings.recordings_path.rglob("*.webm")}
        kinds = {name: sorted(s["codec_type"] for s in (await ffprobe(f))["streams"])
                 for name, f in files.items()}
        assert kinds == {"pat-1.webm": ["audio"], "doc-1.webm": ["audio", "video"]}


WATCHDOG = 2.0  # seconds; the configured timeout, deliberately not scaled


@pytest.mark.parametrize("fault", ["candidates-filtered", "candidates-withheld"])
async def test_a_peer_whose_ice_never_succeeds_fails_the_call_with_no_media(
    tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer, fault: str
) -> None:
    """A peer whose ICE cannot start fails the call no-media at the timeout; all is released."""
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "4",
           "TELEMED_TURN_URLS": turn_server.url, "TELEMED_TURN_SECRETS": turn_server.secret}
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,), watchdog_timeout=WATCHDOG,
                        env=env, turn_urls=(turn_server.url,),
                        turn_secrets=(turn_server.secret,)) as service:
        hub = service.hub
        assert hub.turn is not None
        call = hub.create_call(CallKind.CONSULTATION, [("pat-2", "P", "patient"),
                                                      ("doc-2", "D", "doctor")])
        reported: list[dict[str, object]] = []
        hub.hooks.append(lambda event, c, data: reported.append(data)
                         if event == "call.failed" else None)
        patient = CallClient(service, service.token(call.id, "pat-2"))
        doctor = CallClient(service, service.token(call.id, "doc-2", role="doctor"))
        # Every candidate of the patient is an mDNS name (dropped by the hub), or it sends
        # none at all; it ignores ours too. ICE cannot start, media never flows, and nothing
        # in WebRTC ever gives up. The doctor's side works, and is being recorded.
        patient.mdns_candidates = fault == "candidates-filtered"
        patient.withhold_candidates = fault == "candidates-withheld"
        patient.strip_remote_candidates = True
        try:
            await asyncio.gather(patient.connect(), doctor.connect())
            await patient.join()
            await doctor.join()
            assert await hub.turn.in_use() == 2
            await doctor.publish()
            await doctor.wait_event("recording")
            for kind in ("audio", "video"):
                await doctor.wait_event("mediaFlowing", lambda e, k=kind: e["kind"] == k)
            loop = asyncio.get_running_loop()
            offer_sent = loop.time()
            await patient.publish()
            failed, doctor_failed = await asyncio.gather(
                patient.wait_event("callFailed", timeout=WATCHDOG + 10),
                doctor.wait_event("callFailed", timeout=WATCHDOG + 10))
            elapsed = loop.time() - offer_sent
        finally:
            await asyncio.gather(patient.close(), doctor.close())
        assert failed["reason"] == doctor_failed["reason"] == "no-media"
        assert failed["detail"] == doctor_failed["detail"]
        detail = str(failed["detail"])
        assert "pat-2's browser" in detail and "direction from-browser" in detail, detail
        # All dropped and complete: nothing to check, ICE failed; withheld ones may still
        # come (no end-of-candidates), so the media server's own state stands.
        assert ("ICE FAILED" in detail) == (fault == "candidates-filtered"), detail
        assert call.failure is FailureReason.NO_MEDIA
        assert WATCHDOG <= elapsed < WATCHDOG + scaled(1.5), elapsed  # at the timeout
        await wait_until(lambda: reported, timeout=10, describe=lambda: hub.sessions)
        assert [r["reason"] for r in reported] == ["no-media"]  # what the MIS webhook carries
        async with KurentoClient(kms_url) as kc:
            assert await ServerManager(kc).get_pipelines() == []
        assert hub.sessions == {}
        assert await hub.turn.in_use() == 0
        # The doctor's recording was finalized (stopAndWait) and is whole; the patient's
        # recorder never saw media, so nothing of it is kept.
        files = {f.name: f for f in service.settings.recordings_path.rglob("*.webm")}
        assert "doc-2.webm" in files, sorted(files)
        for f in files.values():
            info = await ffprobe(f)
            assert float(info["format"]["duration"]) > 0
        if fault == "candidates-filtered":
            drops = [e for e in call.timeline.as_list() if e["event"] == "candidates-dropped"
                     and e["participant"] == "pat-2" and e["direction"] == "from-browser"]
            assert drops and set(drops[0]["reasons"]) == {"mdns"}


async def test_a_client_that_never_subscribes_fails_the_call_with_no_media(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A client that never asks for the other's media fails the call naming its missing report."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        watchdog_timeout=WATCHDOG) as service:
        async with joined_consultation(service) as (_, patient, doctor):
            await asyncio.gather(patient.publish(), doctor.publish())
            await patient.subscribe("doc-1")  # the doctor's client never asks for the patient
            failed = await doctor.wait_event("callFailed", timeout=WATCHDOG + 10)
        assert failed["reason"] == "no-media"
        assert failed["detail"].startswith(
            "doc-1's browser reported no media from pat-1 (direction browser-report"), failed
        await wait_until(lambda: service.hub.sessions == {}, describe=lambda: service.hub.sessions)
