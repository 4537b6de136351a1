"""Every exit path of a call releases everything it holds (docs/teardown.md).

Each test drives one way out through the real WebSocket, with aiortc participants, the
embedded media server, real Redis and coturn-secret TURN leases, then checks the same list:
recorders ended with `stopAndWait` before they were released, no object left on the media
server, TURN leases returned, timers cancelled, participants told, the hub's state gone.

The only spy: the embedded media server's recorder class records its `stopAndWait` and
`release` calls (the real methods still run), so the test sees their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import ServerManager
from mediaserver.core import MediaServer
from mediaserver.recorder import RecorderEndpointImpl
from signaling.call import Call, CallKind, CallState
from signaling.call_session import CallSession
from signaling.errors import CallError
from signaling.participant import ParticipantState
from signaling.session import SESSION_CONFIG
from signaling.tokens import JoinClaims
from tests.helpers import wait_until, within
from tests.hub_fixtures import CallClient, Service, clients_for, go_live, run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.services import RedisServer, TurnServer


@dataclass
class Rig:
    service: Service
    kms_url: str
    server: MediaServer
    #: ("stopAndWait" | "release", recorder id), in the order the media server saw them.
    recorder_calls: list[tuple[str, str]] = field(default_factory=list)
    leases_before: int = 0

    async def leases(self) -> int:
        assert self.service.hub.turn is not None
        return await self.service.hub.turn.in_use()

    def recorders(self) -> set[str]:
        return {oid for oid, obj in self.server.objects.items()
                if isinstance(obj, RecorderEndpointImpl)}

    def stopped_before_release(self, recorder: str) -> bool:
        calls = [what for what, rid in self.recorder_calls if rid == recorder]
        return "stopAndWait" in calls and "release" in calls \
            and calls.index("stopAndWait") < calls.index("release")

    async def all_released(self, call: Call, recorders: set[str], runtime: CallSession,
                           *, media_server_alive: bool = True) -> None:
        hub = self.service.hub
        await wait_until(lambda: call.id not in hub.sessions, timeout=15,
                         describe=lambda: (call.state, list(hub.sessions)))
        assert call.finished
        assert call.id not in hub.referrals.ringing and call.id not in hub.presence
        assert runtime.timer._handle is None  # the watchdog's timer
        assert runtime.closing and runtime._loss_timer is None
        assert all(m.conn is None and m.lease is None and m.grace is None
                   and not m.loss.stopped for m in runtime.members.values())
        assert all(p.state in (ParticipantState.LEFT, ParticipantState.INVITED)
                   for p in call.participants.values()), [
                       (e["event"], e.get("participant"), e.get("state"), e.get("why"))
                       for e in call.timeline.as_list()]
        assert await self.leases() == self.leases_before
        if media_server_alive:
            assert [r for r in recorders if not self.stopped_before_release(r)] == []
            assert self.server.objects.keys() <= {self.server.manager.id}
            async with KurentoClient(self.kms_url) as kc:
                assert await ServerManager(kc).get_pipelines() == []
        for f in filter(Path.is_file, self.service.settings.recordings_path.rglob("*.webm")):
            await ffprobe(f)  # finalized: every file that exists is whole


@pytest.fixture
async def rig(tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "8",
           "TELEMED_TURN_URLS": turn_server.url, "TELEMED_TURN_SECRETS": turn_server.secret,
           "TELEMED_CALLS_REJOIN_GRACE": "0.3", "TELEMED_CALLS_RING_TIMEOUT": "0.5"}
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, server), \
            run_service(tmp_path, redis_server.url, (kms_url,), env=env,
                        turn_urls=(turn_server.url,),
                        turn_secrets=(turn_server.secret,)) as service:
        made = Rig(service, kms_url, server)
        stop_and_wait, release = RecorderEndpointImpl._stop_and_wait, RecorderEndpointImpl.release

        async def spied_stop(self: RecorderEndpointImpl, params: dict[str, Any]) -> None:
            made.recorder_calls.append(("stopAndWait", self.id))
            await stop_and_wait(self, params)

        async def spied_release(self: RecorderEndpointImpl) -> None:
            made.recorder_calls.append(("release", self.id))
            await release(self)

        monkeypatch.setattr(RecorderEndpointImpl, "_stop_and_wait", spied_stop)
        monkeypatch.setattr(RecorderEndpointImpl, "release", spied_release)
        made.leases_before = await made.leases()
        yield made


@contextlib.asynccontextmanager
async def live_consultation(rig: Rig) -> AsyncIterator[tuple[Call, dict[str, CallClient]]]:
    call = rig.service.hub.create_call(CallKind.CONSULTATION, [
        ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
    clients = clients_for(rig.service, call)
    try:
        await go_live(rig.service, call, clients)
        assert await rig.leases() == rig.leases_before + 2
        assert len(rig.recorders()) == 2
        yield call, clients
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))


async def one_leaves(rig: Rig, call: Call, clients: dict[str, CallClient],
                     go: Callable[[], Awaitable[None]], why: str) -> None:
    """The patient goes; their part is released at once and the doctor's call goes on."""
    before = rig.recorders()
    doctor = clients["doc-1"]
    await go()
    left = await doctor.wait_event("participantLeft")
    assert left["participant"] == "pat-1"
    await wait_until(lambda: len(rig.recorders()) == 1, describe=rig.recorders)
    (gone,) = before - rig.recorders()
    assert rig.stopped_before_release(gone)
    assert await rig.leases() == rig.leases_before + 1
    assert call.participants["pat-1"].state is ParticipantState.LEFT
    assert [e["why"] for e in call.timeline.as_list() if e["event"] == "left"] == [why]
    assert not call.finished
    await doctor.request("end")
    await doctor.wait_event("callEnded")


async def test_hang_up_releases_everything(rig: Rig) -> None:
    """The doctor's hang-up ends the call and frees recorders, leases, timers and media objects."""
    async with live_consultation(rig) as (call, clients):
        runtime, recorders = rig.service.hub.sessions[call.id], rig.recorders()
        await clients["doc-1"].request("end")
        for client in clients.values():
            await client.wait_event("callEnded")
        assert call.state is CallState.ENDED
    await rig.all_released(call, recorders, runtime)


async def test_the_last_one_to_leave_ends_the_call_and_releases_everything(rig: Rig) -> None:
    """When both leave in turn the call ends and everything it held is released."""
    async with live_consultation(rig) as (call, clients):
        runtime, recorders = rig.service.hub.sessions[call.id], rig.recorders()
        await clients["pat-1"].request("leave")
        await clients["doc-1"].wait_event("participantLeft")
        await clients["doc-1"].request("leave")
        await clients["doc-1"].wait_event("callEnded")
    await rig.all_released(call, recorders, runtime)


@pytest.mark.parametrize("way", ["leave", "disconnect", "token-expiry", "kick"])
async def test_a_participant_who_goes_is_released_and_the_call_goes_on(
    rig: Rig, way: str
) -> None:
    """Leave, disconnect, token expiry or kick frees that participant's part; the call goes on."""
    async with live_consultation(rig) as (call, clients):
        runtime, recorders = rig.service.hub.sessions[call.id], rig.recorders()
        patient = clients["pat-1"]

        async def go() -> None:
            if way == "leave":
                await patient.request("leave")
            elif way == "disconnect":  # the socket drops; the grace period (0.3 s) runs out
                await patient.close()
            elif way == "token-expiry":  # a fresh token that expires within two seconds
                rig.service.app[SESSION_CONFIG].expiry_warning = 0.0
                await patient.request("hello", token=rig.service.token(call.id, "pat-1",
                                                                       ttl=2))
            else:
                await rig.service.hub.kick(call.id, "pat-1")

        why = {"leave": "left", "disconnect": "disconnected", "token-expiry": "token-expired",
               "kick": "removed"}[way]
        await one_leaves(rig, call, clients, go, why)
        if way == "token-expiry":
            assert (await patient.wait_event("error"))["code"] == "auth.expired"
        elif way == "kick":
            await patient.wait_event("removed")
    await rig.all_released(call, recorders, runtime)


async def test_shutdown_fails_the_call_and_releases_everything(rig: Rig) -> None:
    """Hub shutdown fails a live call `shutdown` for everyone and releases all it held."""
    async with live_consultation(rig) as (call, clients):
        runtime, recorders = rig.service.hub.sessions[call.id], rig.recorders()
        await within(rig.service.hub.shutdown(), 20, "hub shutdown")
        for client in clients.values():
            assert (await client.wait_event("callFailed"))["reason"] == "shutdown"
    await rig.all_released(call, recorders, runtime)


async def test_the_watchdog_fails_the_call_and_releases_everything(rig: Rig) -> None:
    """A call whose media never flows is failed no-media by the watchdog and fully released."""
    hub = rig.service.hub
    hub.watchdog_timeout = 1.0
    call = hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                  ("doc-1", "D", "doctor")])
    clients = clients_for(rig.service, call)
    patient, doctor = clients["pat-1"], clients["doc-1"]
    patient.withhold_candidates = patient.strip_remote_candidates = True
    try:
        await asyncio.gather(patient.connect(), doctor.connect())
        await patient.join()
        await doctor.join()
        await asyncio.gather(patient.publish(), doctor.publish())
        runtime, recorders = hub.sessions[call.id], rig.recorders()
        assert len(recorders) == 2
        for client in clients.values():
            assert (await client.wait_event("callFailed"))["reason"] == "no-media"
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))
    await rig.all_released(call, recorders, runtime)


@pytest.mark.parametrize("way", ["decline", "timeout", "cancel"])
async def test_a_ring_that_ends_releases_what_the_caller_held(rig: Rig, way: str) -> None:
    """A declined, timed-out or cancelled ring tells the right side and frees the caller's media."""
    hub = rig.service.hub
    call = hub.create_call(CallKind.REFERRAL, [("doc-1", "D", "doctor"),
                                              ("fd-1", "F", "consultant")])
    clients = clients_for(rig.service, call)
    doctor, consultant = clients["doc-1"], clients["fd-1"]
    try:
        await asyncio.gather(doctor.connect(), consultant.connect())
        await consultant.hello()
        await doctor.join()
        await doctor.publish()  # the doctor's camera is already on while it rings
        runtime, recorders = hub.sessions[call.id], rig.recorders()
        assert len(recorders) == 1 and await rig.leases() == rig.leases_before + 1
        await doctor.request("ring", participant="fd-1")
        await consultant.wait_event("incomingCall")
        ring_timer = hub.referrals.ringing.rings[call.id].timer
        if way == "decline":
            await consultant.request("decline")
        elif way == "cancel":
            await doctor.request("cancel")
        event = {"decline": "ringDeclined", "timeout": "ringTimeout",
                 "cancel": "ringCancelled"}[way]
        told = {"decline": [doctor], "timeout": [doctor, consultant],
                "cancel": [consultant]}[way]
        for client in told:
            await client.wait_event(event)
        final = "callEnded" if way == "cancel" else "callFailed"
        for client in clients.values():
            await client.wait_event(final)
        assert ring_timer.cancelled() or way == "timeout"
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))
    await rig.all_released(call, recorders, runtime)


class Inbox:
    """A hub-side connection that keeps what it is sent (a socket's stand-in for the hub)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        self.sent.append(text)


async def test_a_join_racing_the_end_of_its_call_returns_its_lease(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join whose TURN lease arrives after its call ended is refused and gives the lease back."""
    hub = rig.service.hub
    assert hub.turn is not None
    call = hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                  ("doc-1", "D", "doctor")])
    asked, gate = asyncio.Event(), asyncio.Event()
    lease = hub.turn.lease

    async def held_lease(call_id: str, participant: str) -> Any:
        asked.set()
        await gate.wait()  # the call ends while the lease is being taken
        return await lease(call_id, participant)

    monkeypatch.setattr(hub.turn, "lease", held_lease)
    claims = JoinClaims(subject="pat-1", name="P", role="patient", call_id=call.id,
                        expires=2**31)
    join = asyncio.create_task(hub.join(Inbox(), claims))
    await within(asked.wait(), 5, "the join asking for a lease")
    await hub.end(call.id)
    gate.set()
    with pytest.raises(CallError) as info:
        await within(join, 10, "the join")
    assert info.value.code == "call.ended"
    assert await rig.leases() == rig.leases_before
    assert call.id not in hub.sessions


async def test_shutdown_tells_a_consultant_waiting_to_be_rung(rig: Rig) -> None:
    """Shutdown fails a call whose consultant is only online and tells them, leaving no presence."""
    hub = rig.service.hub
    call = hub.create_call(CallKind.REFERRAL, [("doc-1", "D", "doctor"),
                                              ("fd-1", "F", "consultant")])
    consultant = CallClient(rig.service, rig.service.token(call.id, "fd-1", role="consultant"))
    try:
        await consultant.connect()
        await consultant.hello()  # online, nothing joined yet: no media, no runtime
        await within(hub.shutdown(), 10, "hub shutdown")
        assert (await consultant.wait_event("callFailed"))["reason"] == "shutdown"
    finally:
        await consultant.close()
    assert call.state is CallState.FAILED and call.id not in hub.presence


async def test_a_finished_call_is_forgotten_after_its_linger(rig: Rig) -> None:
    """An ended call still answers late requests during its linger, then is forgotten."""
    hub = rig.service.hub
    hub.finished_linger = 0.2
    call = hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                  ("doc-1", "D", "doctor")])
    patient = CallClient(rig.service, rig.service.token(call.id, "pat-1"))
    try:
        await patient.connect()
        await patient.hello()
        await patient.close()
        await wait_until(lambda: call.id not in hub.presence, describe=lambda: hub.presence.online)
        await hub.end(call.id)
        assert hub.calls[call.id] is call  # late requests still learn it is over
        await wait_until(lambda: call.id not in hub.calls, timeout=5)
    finally:
        await patient.close()


async def test_a_recording_that_cannot_start_fails_the_call_before_it_goes_live(
    rig: Rig
) -> None:
    """A recorder that cannot open its file fails the call recording-failed before it is live."""
    hub = rig.service.hub
    call = hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                  ("doc-1", "D", "doctor")])
    # A directory where the patient's recording file must go: the recorder cannot open it.
    folder = rig.service.settings.recordings_path / time.strftime("%Y/%m/%d") / call.id
    (folder / "pat-1.webm").mkdir(parents=True)
    clients = clients_for(rig.service, call)
    try:
        await asyncio.gather(*(c.connect() for c in clients.values()))
        for client in clients.values():
            await client.join()
        runtime = hub.sessions[call.id]
        await asyncio.gather(*(c.publish() for c in clients.values()),
                             return_exceptions=True)  # the call may fail under a publish
        for client in clients.values():
            failed = await client.wait_event("callFailed")
            assert failed["reason"] == "recording-failed", failed
            # Participants read what happened, not where the server keeps its files.
            assert str(folder) not in failed["detail"] and "pat-1" in failed["detail"]
        assert not any(e["type"] == "callLive" for c in clients.values() for e in c.events)
        recorders = {rid for what, rid in rig.recorder_calls} | rig.recorders()
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))
    await rig.all_released(call, recorders, runtime)
