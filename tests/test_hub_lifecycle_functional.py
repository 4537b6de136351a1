"""Calls over their life: a conference, a dropped connection and its rejoin, media that
stops mid-call, and a media server that dies under a call."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import ServerManager
from signaling.call import CallKind, CallState, FailureReason
from signaling.participant import ParticipantState
from tests.helpers import wait_until, within
from tests.hub_fixtures import CallClient, ProtocolError, clients_for, go_live, run_service
from tests.media_fixtures import ffprobe, mediaserver_process, run_mediaserver
from tests.services import RedisServer, free_port


async def close_all(clients: dict[str, CallClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients.values()))


async def rejoin(again: CallClient, other: CallClient) -> None:
    """`again` (the dropped participant on a new socket) joins and publishes; the other
    re-subscribes as the page does on participantPublished; both get each other's media."""
    await again.connect()
    joined = await again.join()
    pid, source = joined["you"]["id"], other.participant
    assert source is not None
    await again.publish()
    await other.wait_event("participantPublished", lambda e: e["participant"] == pid)
    other.got_media.pop(pid)
    await asyncio.gather(other.subscribe(pid), again.subscribe(source))
    await within(again.got_media[source].wait(), 10, f"{source}'s media after the rejoin")
    await within(other.got_media[pid].wait(), 10, f"{pid}'s media after the rejoin")


async def test_a_three_party_conference_is_live_and_recorded(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Three doctors each receive both others' media, and each one's recording is kept."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONFERENCE, [
            ("d1", "Branch 1", "doctor"), ("d2", "Branch 2", "doctor"),
            ("d3", "Branch 3", "consultant")])
        clients = clients_for(service, call)
        try:
            await go_live(service, call, clients)
            for pid, client in clients.items():
                assert set(client.received) == set(clients) - {pid}
                assert all(n >= 5 for counts in client.received.values()
                           for n in counts.values())
            await clients["d1"].request("end")
            await clients["d3"].wait_event("callEnded")
        finally:
            await close_all(clients)
        names = sorted(f.name for f in service.settings.recordings_path.rglob("*.webm"))
        assert names == ["d1.webm", "d2.webm", "d3.webm"]


async def test_a_dropped_participant_rejoins_and_the_call_goes_on(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A dropped patient rejoins within the grace; the call stays live; a part2 file is added."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_REJOIN_GRACE": "30"}) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        doctor = clients["doc-1"]
        again = CallClient(service, service.token(call.id, "pat-1"))
        try:
            await go_live(service, call, clients)
            await clients["pat-1"].close()  # the patient's network drops
            await doctor.wait_event("participantReconnecting")
            assert call.participants["pat-1"].state is ParticipantState.RECONNECTING
            assert call.state is CallState.LIVE

            await rejoin(again, doctor)
            assert call.state is CallState.LIVE
            assert "rejoined" in [e["event"] for e in call.timeline.as_list()]
            await doctor.request("end")
        finally:
            await asyncio.gather(close_all(clients), again.close())
        names = sorted(f.name for f in service.settings.recordings_path.rglob("*.webm"))
        assert names == ["doc-1.webm", "pat-1.part2.webm", "pat-1.webm"]
        for name in names:
            await ffprobe(next(service.settings.recordings_path.rglob(name)))


def ignore_consent_checks(pc: RTCPeerConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer stops answering STUN binding requests, as Chromium's answers to aioice's
    consent checks were seen to miss their 0.5 s wait (a real peer, only made deaf)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport._connection
        monkeypatch.setattr(connection, "request_received", lambda *_: None)


async def test_a_rejoin_after_the_consent_lifetime_still_gets_the_others_media(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ICE consent expiry, a rejoin still gets media both ways and satisfies its watchdog."""
    # aioice's consent lifetime (6 checks ~5 s apart) shrunk to ~3.7 s, for both sides.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    lifetime = aioice.ice.CONSENT_FAILURES * (0.1 * 1.2 + 0.5)
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_REJOIN_GRACE": "30"}) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-6", "P", "patient"), ("doc-6", "D", "doctor")])
        clients = clients_for(service, call)
        doctor = clients["doc-6"]
        again = CallClient(service, service.token(call.id, "pat-6"))
        try:
            await go_live(service, call, clients)
            for pc in doctor.pcs.values():
                ignore_consent_checks(pc, monkeypatch)
            # What must not happen (the server dropping the doctor's upload) has no event
            # to await: wait the consent lifetime out.
            await asyncio.sleep(lifetime + 0.5)
            await clients["pat-6"].close()
            await doctor.wait_event("participantReconnecting")
            await rejoin(again, doctor)
            # The rejoin is watched afresh and proven by the new endpoints' own events.
            watchdog = service.hub.sessions[call.id].watchdog
            await wait_until(lambda: not watchdog.pending, timeout=10,
                             describe=lambda: watchdog.deadlines)
            assert call.state is CallState.LIVE
            await doctor.request("end")
        finally:
            await asyncio.gather(close_all(clients), again.close())


async def test_a_participant_who_does_not_return_in_time_has_left(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A participant not back within the grace has left, and the last one out ends the call."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_REJOIN_GRACE": "0.3"}) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        ended = asyncio.Event()
        service.hub.hooks.append(lambda event, c, data: ended.set()
                                 if event == "call.ended" else None)
        try:
            await go_live(service, call, clients)
            await clients["pat-1"].close()
            await clients["doc-1"].wait_event("participantReconnecting")
            left = await clients["doc-1"].wait_event("participantLeft")
            assert left["participant"] == "pat-1"
            assert call.participants["pat-1"].state is ParticipantState.LEFT
            await clients["doc-1"].close()
            await asyncio.wait_for(ended.wait(), 10)
        finally:
            await close_all(clients)
        assert service.hub.sessions == {}


async def test_media_that_stops_mid_call_is_reported_and_the_call_goes_on(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A mid-call stop is reported interrupted, then restored; the call stays live throughout."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_MEDIA_LOSS_REPORT": "0.3"}) as service:
        reported: list[tuple[str, dict[str, object]]] = []
        service.hub.hooks.append(lambda event, call, data: reported.append((event, data))
                                 if event.startswith("call.media") else None)
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        try:
            await go_live(service, call, clients)
            for track in clients["pat-1"].tracks:
                track.gate.clear()  # the patient's camera and microphone stop sending
            lost = await clients["doc-1"].wait_event(
                "mediaInterrupted", lambda e: e["participant"] == "pat-1")
            assert lost["kind"] in ("audio", "video")
            assert call.state is CallState.LIVE
            for track in clients["pat-1"].tracks:
                track.gate.set()
            await clients["doc-1"].wait_event("mediaRestored",
                                              lambda e: e["participant"] == "pat-1")
            assert call.state is CallState.LIVE
            events = [e for e, _ in reported]
            assert "call.media_interrupted" in events and "call.media_restored" in events
            await clients["doc-1"].request("end")
        finally:
            await close_all(clients)


async def test_a_media_server_that_dies_fails_its_calls_and_the_next_call_works(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A killed media server fails its call media-server-lost within 5 s; a new call works after."""
    port = free_port()
    kms_url = f"ws://127.0.0.1:{port}/kurento"
    env = {"TELEMED_MEDIA_HEALTH_INTERVAL": "0.2", "TELEMED_MEDIA_DOWN_AFTER": "0.5"}
    async with run_service(tmp_path, redis_server.url, (kms_url,), env=env) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        torn_down = asyncio.Event()
        service.hub.hooks.append(lambda event, c, data: torn_down.set()
                                 if event == "call.failed" and c is call else None)
        try:
            async with mediaserver_process(port, tmp_path) as proc:
                await service.hub.pool.check()
                await go_live(service, call, clients)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                loop = asyncio.get_running_loop()
                killed = loop.time()
                failed = await clients["pat-1"].wait_event("callFailed", timeout=10)
                assert loop.time() - killed < 5
                assert failed["reason"] == "media-server-lost"
                assert (await clients["doc-1"].wait_event("callFailed"))["reason"] == \
                    "media-server-lost"
                await asyncio.wait_for(torn_down.wait(), 5)
            assert call.failure is FailureReason.MEDIA_SERVER_LOST
            assert service.hub.sessions == {}
        finally:
            await close_all(clients)

        async with mediaserver_process(port, tmp_path):
            await asyncio.wait_for(service.hub.pool.wait_up(), 15)
            second = service.hub.create_call(CallKind.CONSULTATION, [
                ("pat-2", "P", "patient"), ("doc-2", "D", "doctor")])
            clients = clients_for(service, second)
            try:
                await go_live(service, second, clients)
                await clients["doc-2"].request("end")
                await clients["pat-2"].wait_event("callEnded")
            finally:
                await close_all(clients)
            async with KurentoClient(kms_url) as kc:
                assert await ServerManager(kc).get_pipelines() == []


async def test_an_expiring_token_warns_then_ends_the_participants_part_unless_refreshed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Expiring tokens warn; a refreshed one stays, an unrefreshed one leaves, the call goes on."""
    from signaling.session import SESSION_CONFIG

    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        service.app[SESSION_CONFIG].expiry_warning = 1.0
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
        patient = CallClient(service, service.token(call.id, "pat-1", ttl=2))
        doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor", ttl=2))
        try:
            await asyncio.gather(patient.connect(), doctor.connect())
            await patient.join()
            await doctor.join()
            warned = await doctor.wait_event("tokenExpiring")
            assert warned["expiresAt"] > 0
            # The doctor's MIS hands a fresh token over the same connection; the patient's
            # does not.
            refreshed = await doctor.request(
                "hello", token=service.token(call.id, "doc-1", role="doctor", ttl=600))
            assert refreshed["refreshed"] is True
            expired = await patient.wait_event("error", lambda e: e["code"] == "auth.expired")
            assert "expired" in expired["message"]
            left = await doctor.wait_event("participantLeft")
            assert left["participant"] == "pat-1"
            assert [e["why"] for e in call.timeline.as_list()
                    if e["event"] == "left"] == ["token-expired"]
            assert (await doctor.request("ping"))["type"] == "pong"
            assert call.state is CallState.CONNECTING  # the call itself goes on
            with pytest.raises(ProtocolError) as info:  # a token for someone else: refused
                await doctor.request("hello", token=service.token(call.id, "pat-1", ttl=600))
            assert info.value.code == "auth.invalid"
        finally:
            await asyncio.gather(patient.close(), doctor.close())
