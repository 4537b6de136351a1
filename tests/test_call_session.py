"""The hub's call rules, driven through a `Hub` with an in-memory media layer and TURN pool
(tests/call_fakes.py): no Redis, no media server, no aiortc."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from signaling import takeover
from signaling.call import Call, CallKind, CallState, FailureReason, IllegalTransition
from signaling.call_session import CallSession
from signaling.errors import CallError, MediaError
from signaling.events import FailedPart
from signaling.hub import Hub
from signaling.liveness import MediaLoss
from signaling.participant import ParticipantState
from signaling.participant_session import ParticipantSession
from signaling.tokens import JoinClaims
from tests.call_fakes import (
    RECV_OFFER,
    SEND_OFFER,
    FakeMedia,
    FakeTurn,
    Socket,
    consultation,
    make_hub,
)
from turn.lease import TurnLease

KINDS = ("audio", "video")
#: Every fact a two-party call needs before it is live.
FACTS = ["pat-upload", "doc-upload", "pat-recording", "doc-recording", "pat-receives",
         "doc-receives", "pat-reports", "doc-reports"]


def claims(call: Call, pid: str) -> JoinClaims:
    role = call.participants[pid].role
    return JoinClaims(subject=pid, name=pid, role=role, call_id=call.id,  # type: ignore[arg-type]
                      expires=2**40)


async def joined(hub: Hub, call: Call, *pids: str) -> dict[str, Socket]:
    sockets = {pid: Socket(pid) for pid in pids}
    for pid, sock in sockets.items():
        await hub.join(sock, claims(call, pid))
    return sockets


async def negotiated(hub: Hub, call: Call) -> tuple[dict[str, Socket], CallSession]:
    """Both joined, published and subscribed to each other: no media proven yet."""
    sockets = await joined(hub, call, "pat", "doc")
    for pid, sock in sockets.items():
        await hub.publish(sock, call.id, pid, SEND_OFFER)
    for viewer, source in (("pat", "doc"), ("doc", "pat")):
        await hub.subscribe(sockets[viewer], call.id, viewer, source, RECV_OFFER)
    return sockets, hub.sessions[call.id]


def prove(hub: Hub, call: Call, media: FakeMedia, sockets: dict[str, Socket],
          fact: str) -> None:
    pid, what = fact.split("-")
    other = "doc" if pid == "pat" else "pat"
    if what == "upload":
        for kind in KINDS:
            media.listener.flow(pid, "publish", "out", kind, True)
    elif what == "recording":
        media.listener.recording(pid)
    elif what == "receives":
        for kind in KINDS:
            media.listener.flow(pid, other, "in", kind, True)
    else:
        hub.client_event(sockets[pid], call.id, pid, "mediaReceived", {"participant": other})


@pytest.mark.parametrize("missing", FACTS)
async def test_a_call_is_live_only_once_every_upload_viewer_and_recorder_is_confirmed(
        tmp_path: Path, missing: str) -> None:
    """Withholding any one of the facts (an upload, a recorder, media reaching a viewer, a
    browser's report) keeps the call connecting; the last fact makes it live."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    sockets, _ = await negotiated(hub, call)
    for fact in FACTS:
        if fact != missing:
            prove(hub, call, media[call.id], sockets, fact)
    assert call.state is CallState.CONNECTING
    assert all("callLive" not in s.types() for s in sockets.values())
    prove(hub, call, media[call.id], sockets, missing)
    assert call.state is CallState.LIVE
    assert all("callLive" in s.types() for s in sockets.values())
    assert all(p.state is ParticipantState.CONNECTED for p in call.participants.values())


async def test_a_call_with_one_publisher_never_goes_live(tmp_path: Path) -> None:
    """Everything proven for a lone publisher does not make a call live."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    sockets = await joined(hub, call, "pat")
    await hub.publish(sockets["pat"], call.id, "pat", SEND_OFFER)
    prove(hub, call, media[call.id], sockets, "pat-upload")
    prove(hub, call, media[call.id], sockets, "pat-recording")
    assert call.state is CallState.CONNECTING


async def test_leaving_forgets_the_leavers_media_expectations(tmp_path: Path) -> None:
    """The watchdog stops timing what involves someone who left, so their absence cannot
    fail the call; the one who stays is still timed."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    sockets, session = await negotiated(hub, call)
    assert {e.participant for e in session.watchdog.deadlines} == {"pat", "doc"}
    await hub.leave(sockets["pat"], call.id, "pat")
    assert session.watchdog.pending
    assert all("pat" not in (e.participant, e.source) for e in session.watchdog.deadlines)
    assert "pat" in media[call.id].removed and not call.finished


async def test_a_second_socket_replaces_the_first(tmp_path: Path) -> None:
    """The same person joining again (a new tab, a phone) is told `replaced` on the old
    socket; the new one is the member, and the old one's media is removed."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    first = (await joined(hub, call, "pat"))["pat"]
    second = Socket("pat-2")
    await hub.join(second, claims(call, "pat"))
    assert first.types()[-1] == "replaced" and "replaced" not in second.types()
    assert hub.sessions[call.id].members["pat"].conn is second
    assert media[call.id].removed == ["pat"]
    with pytest.raises(CallError) as refused:
        await hub.publish(first, call.id, "pat", SEND_OFFER)
    assert refused.value.code == "call.not_found"


@pytest.mark.parametrize("size", [2, 8])
async def test_joins_in_the_same_loop_turn_all_succeed(tmp_path: Path, size: int) -> None:
    """Participants whose joins arrive together (the TURN lease yields to the loop between
    them) all get in: none is refused by the call's own state change."""
    hub, _ = make_hub(tmp_path, turn=FakeTurn())
    kind = CallKind.CONFERENCE if size > 2 else CallKind.CONSULTATION
    call = hub.create_call(kind, [(f"p{i}", f"P{i}", "doctor") for i in range(size)])
    for _ in range(50):
        results = await asyncio.gather(*(hub.join(Socket(), claims(call, f"p{i}"))
                                         for i in range(size)), return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert call.state is CallState.CONNECTING
        members = hub.sessions[call.id].members
        assert all(m.conn is not None and m.lease is not None for m in members.values())


async def test_the_same_person_joining_twice_at_once_ends_with_one_socket(
        tmp_path: Path) -> None:
    """Two devices of one person join in the same loop turn: one wins, the other is told
    `replaced`, nobody gets an error."""
    hub, _ = make_hub(tmp_path, turn=FakeTurn())
    call = consultation(hub)
    a, b = Socket("a"), Socket("b")
    await asyncio.gather(hub.join(a, claims(call, "pat")), hub.join(b, claims(call, "pat")))
    member = hub.sessions[call.id].members["pat"]
    assert member.conn in (a, b)
    loser = a if member.conn is b else b
    assert loser.types()[-1] == "replaced"


class ColonPasswordTurn(FakeTurn):
    """pat's lease has a ':' in its password, which Kurento's turnUrl regex mis-splits.
    (A fake: none of our real providers issues such a password; a reTurn users file or a
    coturn user database someone filled by hand could.)"""

    async def lease(self, call_id: str, pid: str) -> TurnLease:
        lease = await super().lease(call_id, pid)
        if pid == "pat":
            lease = self.out[lease.key] = TurnLease(
                call_id=call_id, participant=pid, username="u-pat", credential="se:cret",
                urls=lease.urls, expires=lease.expires)
        return lease


async def test_turn_credentials_kurento_would_misread_refuse_only_that_negotiation(
    tmp_path: Path,
) -> None:
    """A lease KMS's turnUrl regex would mis-split refuses that participant's publish and
    subscribe with turn.unusable before the media layer is asked; the call goes on."""
    hub, media = make_hub(tmp_path, turn=ColonPasswordTurn())
    call = consultation(hub)
    sockets = await joined(hub, call, "pat", "doc")
    for attempt in (hub.publish(sockets["pat"], call.id, "pat", SEND_OFFER),
                    hub.subscribe(sockets["pat"], call.id, "pat", "doc", RECV_OFFER)):
        with pytest.raises(MediaError) as refused:
            await attempt
        assert refused.value.code == "turn.unusable"
        assert "se:cret" not in refused.value.message
    assert "pat" not in media[call.id].participants  # the media layer was never asked
    await hub.publish(sockets["doc"], call.id, "doc", SEND_OFFER)
    assert "doc" in media[call.id].participants
    assert call.state is CallState.CONNECTING and not call.finished
    assert [e["participant"] for e in call.timeline.as_list()
            if e["event"] == "turn-unusable"] == ["pat", "pat"]
    assert "participantPublished" in sockets["pat"].types()


async def test_ending_releases_media_leases_members_and_timers(tmp_path: Path) -> None:
    """Hang-up closes the media (recorders finalized by the media layer), returns every
    lease, closes every participant and cancels the watchdog; a second end does nothing."""
    turn = FakeTurn()
    hub, media = make_hub(tmp_path, turn=turn)
    call = consultation(hub)
    sockets, session = await negotiated(hub, call)
    await hub.end(call.id)
    await hub.end(call.id)
    assert call.state is CallState.ENDED and media[call.id].closed == [False]
    assert sorted(turn.released) == [f"{call.id}/doc", f"{call.id}/pat"]
    assert all(m.conn is None and m.lease is None for m in session.members.values())
    assert all(p.state is ParticipantState.LEFT for p in call.participants.values())
    assert session.timer._handle is None and call.id not in hub.sessions
    assert all(s.types()[-1] == "callEnded" for s in sockets.values())


async def test_the_last_leaver_ends_the_call_and_returns_its_lease(tmp_path: Path) -> None:
    """When nobody is left (connected or within the rejoin grace) the call ends, and the
    leaver's lease is returned before."""
    turn = FakeTurn()
    hub, media = make_hub(tmp_path, turn=turn)
    call = consultation(hub)
    sockets = await joined(hub, call, "pat", "doc")
    await hub.leave(sockets["pat"], call.id, "pat")
    assert not call.finished and turn.released == [f"{call.id}/pat"]
    assert "participantLeft" in sockets["doc"].types()
    await hub.leave(sockets["doc"], call.id, "doc")
    assert call.state is CallState.ENDED and media[call.id].closed == [False]
    assert sorted(turn.released) == [f"{call.id}/doc", f"{call.id}/pat"]


async def test_a_disconnect_holds_the_place_until_the_grace_runs_out(tmp_path: Path) -> None:
    """A dropped socket keeps its participant for the rejoin grace; rejoining in time
    cancels it, and a participant who never comes back is gone when it ends."""
    hub, _ = make_hub(tmp_path, grace=0.01)
    call = consultation(hub)
    sockets = await joined(hub, call, "pat", "doc")
    await hub.disconnected(sockets["pat"], call.id, "pat")
    member = hub.sessions[call.id].members["pat"]
    assert member.reconnecting and member.participant.state is ParticipantState.RECONNECTING
    assert "participantReconnecting" in sockets["doc"].types()
    await hub.join(Socket("pat-again"), claims(call, "pat"))
    assert not member.reconnecting
    assert any(e["event"] == "rejoined" for e in call.timeline.as_list())
    left = asyncio.Event()
    hub.hooks.append(lambda event, *_: left.set() if event == "participant.left" else None)
    await hub.disconnected(member.conn, call.id, "pat")  # type: ignore[arg-type]
    await asyncio.wait_for(left.wait(), 5)
    assert member.participant.state is ParticipantState.LEFT and not member.reconnecting


async def test_media_lost_mid_call_is_reported_after_the_delay_and_restored(
        tmp_path: Path) -> None:
    """A flow that stops in a live call is reported `mediaInterrupted` once it lasted the
    report delay, and `mediaRestored` when it comes back; a blip shorter is not reported."""
    hub, media = make_hub(tmp_path)
    hub.media_loss_report = 0.01
    call = consultation(hub)
    sockets, _ = await negotiated(hub, call)
    for fact in FACTS:
        prove(hub, call, media[call.id], sockets, fact)
    assert call.state is CallState.LIVE
    listener = media[call.id].listener
    listener.flow("pat", "publish", "out", "video", False)
    listener.flow("pat", "publish", "out", "video", True)  # a blip
    listener.flow("pat", "publish", "out", "audio", False)
    reported = asyncio.Event()
    hub.hooks.append(lambda event, *_: reported.set()
                     if event == "call.media_interrupted" else None)
    await asyncio.wait_for(reported.wait(), 5)
    doc = sockets["doc"].sent
    assert [m for m in doc if m["type"] == "mediaInterrupted"] == [
        {"type": "mediaInterrupted", "participant": "pat", "kind": "audio"}]
    listener.flow("pat", "publish", "out", "audio", True)
    assert doc[-1] == {"type": "mediaRestored", "participant": "pat", "kind": "audio"}


async def test_a_recorder_error_fails_the_call_without_the_file_path(tmp_path: Path) -> None:
    """A recorder's error fails the call `recording-failed`; participants read who, not
    where the server keeps its files (the timeline keeps the description)."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    sockets, _ = await negotiated(hub, call)
    ended = asyncio.Event()
    hub.hooks.append(lambda event, *_: ended.set() if event == "call.failed" else None)
    media[call.id].listener.failure("pat", FailedPart.RECORDER,
                                    "RESOURCE_ERROR_OPEN: /srv/x/pat.webm")
    await asyncio.wait_for(ended.wait(), 5)
    assert call.failure is FailureReason.RECORDING_FAILED
    failed = [m for m in sockets["doc"].sent if m["type"] == "callFailed"]
    assert failed and "/srv/x" not in failed[0]["detail"] and "pat" in failed[0]["detail"]
    assert any("/srv/x" in str(e.get("error")) for e in call.timeline.as_list())


@pytest.mark.parametrize("part", [FailedPart.ENDPOINT, FailedPart.RECORDER_WARNING])
async def test_an_endpoint_error_or_a_recorder_warning_does_not_fail_the_call(
        tmp_path: Path, part: FailedPart) -> None:
    """An error of a WebRtcEndpoint, or a recorder's mere warning, lands on the timeline;
    the call goes on: nothing is closing and no teardown was started."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    _, session = await negotiated(hub, call)
    media[call.id].listener.failure("pat", part, "STREAM_ERROR: something")
    assert not call.finished and not session.closing and not hub.background.tasks
    last = call.timeline.as_list()[-1]
    assert last["event"] == "media-error"
    assert last["error"].startswith("recorder-warning: " if part is FailedPart.RECORDER_WARNING
                                    else "STREAM_ERROR")


async def test_the_watchdog_fails_a_call_without_media(tmp_path: Path) -> None:
    """Nothing proven within the timeout: the call fails `no-media` with the ICE state of
    the endpoint that explains it, and everything is released."""
    hub, media = make_hub(tmp_path, watchdog_timeout=0.01)
    call = consultation(hub)
    await negotiated(hub, call)
    media[call.id].ice_states[("pat", "publish")] = "FAILED"
    failed = asyncio.Event()
    hub.hooks.append(lambda event, *_: failed.set() if event == "call.failed" else None)
    await asyncio.wait_for(failed.wait(), 5)
    assert call.failure is FailureReason.NO_MEDIA
    assert media[call.id].closed == [False] and call.id not in hub.sessions


async def test_a_referral_callee_cannot_join_before_accepting(tmp_path: Path) -> None:
    """In a referral only the doctor joins before the consultant accepts the ring."""
    hub, _ = make_hub(tmp_path)
    call = hub.create_call(CallKind.REFERRAL, [("doc", "D", "doctor"),
                                               ("con", "C", "consultant")])
    with pytest.raises(CallError) as refused:
        await hub.join(Socket(), claims(call, "con"))
    assert refused.value.code == "call.not_accepted"
    await hub.join(Socket(), claims(call, "doc"))
    assert call.state is CallState.CREATED  # a referral is connecting only once accepted


@pytest.mark.parametrize(("start", "to"), [
    (CallState.CREATED, CallState.LIVE), (CallState.ENDED, CallState.CONNECTING),
    (CallState.FAILED, CallState.ENDED), (CallState.LIVE, CallState.RINGING),
    (CallState.CONNECTING, CallState.CONNECTING)])
def test_illegal_call_transitions_are_refused(start: CallState, to: CallState) -> None:
    """A call move the table does not allow raises and leaves the state as it was."""
    call = Call(kind=CallKind.CONSULTATION, state=start)
    with pytest.raises(IllegalTransition):
        call.transition(to, reason=FailureReason.INTERNAL if to is CallState.FAILED else None)
    assert call.state is start


@pytest.mark.parametrize(("start", "to"), [
    (ParticipantState.INVITED, ParticipantState.CONNECTED),
    (ParticipantState.INVITED, ParticipantState.RECONNECTING),
    (ParticipantState.LEFT, ParticipantState.CONNECTED),
    (ParticipantState.RECONNECTING, ParticipantState.CONNECTED),
    (ParticipantState.CONNECTING, ParticipantState.CONNECTING)])
def test_illegal_participant_transitions_are_refused(start: ParticipantState,
                                                    to: ParticipantState) -> None:
    """A participant move the table does not allow raises and leaves the state as it was."""
    call = Call(kind=CallKind.CONSULTATION)
    participant = call.add_participant("p", "P", "patient")
    participant.state = start
    with pytest.raises(IllegalTransition):
        participant.transition(to)
    assert participant.state is start


def member(state: ParticipantState = ParticipantState.CONNECTED) -> ParticipantSession:
    """A participant session holding a socket, a lease and media facts."""
    call = Call(kind=CallKind.CONSULTATION)
    participant = call.add_participant("pat", "P", "patient")
    participant.state = state
    session = ParticipantSession(participant, MediaLoss(report_after=1.0), conn=Socket(),
                                 lease=TurnLease(call_id=call.id, participant="pat",
                                                 username="u", credential="c", urls=(),
                                                 expires=0.0))
    session.reported.add("doc")
    session.recording = True
    session.loss.stop(("pat", "doc", "audio"), now=0.0)
    return session


async def test_closing_a_participant_releases_everything_it_holds() -> None:
    """close() frees grace, socket, media facts and lease, moves to left; a second does nothing."""
    session = member()
    lease = session.lease
    session.grace = asyncio.get_running_loop().call_later(3600, lambda: None)
    grace = session.grace
    assert session.present and session.reconnecting
    assert session.close() is lease
    assert grace.cancelled() and session.grace is None
    assert session.conn is None and session.lease is None and not session.present
    assert session.reported == set() and session.recording is False
    assert session.loss.stopped == {}
    assert session.participant.state is ParticipantState.LEFT
    entries = len(session.participant.events.as_list())  # type: ignore[union-attr]
    assert session.close() is None
    assert len(session.participant.events.as_list()) == entries  # type: ignore[union-attr]


def test_closing_someone_who_already_left_does_not_move_them_again() -> None:
    """A participant already `left` (left -> left is illegal) closes without an error."""
    session = member(ParticipantState.LEFT)
    assert session.close() is not None
    assert session.participant.state is ParticipantState.LEFT


async def test_stopping_the_grace_says_whether_one_was_running() -> None:
    """`stop_grace()` is True and cancels the timer when a grace runs, False otherwise."""
    session = member()
    assert session.stop_grace() is False
    session.grace = asyncio.get_running_loop().call_later(3600, lambda: None)
    handle = session.grace
    assert session.stop_grace() is True and handle.cancelled()
    assert session.stop_grace() is False and not session.reconnecting


def test_forgetting_media_keeps_the_socket_and_the_lease() -> None:
    """forget_media() drops what endpoints proved but keeps the socket and the lease."""
    session = member()
    session.forget_media()
    assert session.reported == set() and session.recording is False
    assert session.loss.stopped == {}
    assert session.conn is not None and session.lease is not None and session.present
    assert session.id == "pat"


async def test_a_clean_stop_with_takeover_tells_everyone_and_ends_nothing(
        tmp_path: Path) -> None:
    """`suspend`: each connected participant hears serviceRestarting and its socket is
    closed; the call stays live, its media is neither removed nor closed, no event goes to
    the MIS, and the sockets closing afterwards change nothing."""
    hub, media = make_hub(tmp_path, grace=30.0)
    call = consultation(hub)
    sockets, _ = await negotiated(hub, call)
    for fact in FACTS:
        prove(hub, call, media[call.id], sockets, fact)
    assert call.state is CallState.LIVE
    heard: list[str] = []
    hub.hooks.append(lambda event, c, data: heard.append(event))
    await hub.suspend()
    for sock in sockets.values():
        assert sock.types()[-2:] == ["serviceRestarting", "(closed)"]
    for pid, sock in sockets.items():
        await hub.disconnected(sock, call.id, pid)
    assert call.state is CallState.LIVE and not call.finished
    assert media[call.id].removed == [] and media[call.id].closed == []
    assert heard == []


async def test_a_taken_over_calls_grace_starts_when_the_service_serves_not_at_adoption(
        tmp_path: Path) -> None:
    """Adopting many calls takes a while before the service serves: the participants'
    rejoin grace starts at `hold_places` (when it serves), never at the adoption, or the
    first calls adopted would end before their browsers could come back. Found by
    bench.takeover at 50 calls."""
    hub, _ = make_hub(tmp_path, grace=30.0)
    snap = {"id": "c1", "kind": "consultation", "state": "live", "createdAt": 1.0,
            "mediaServer": "ws://kms", "mediaPipeline": "p1", "timeline": [],
            "participants": [
                {"id": "pat", "name": "P", "role": "patient", "state": "connected",
                 "published": ["audio", "video"]},
                {"id": "doc", "name": "D", "role": "doctor", "state": "connected",
                 "published": ["audio", "video"]}]}
    call = hub.calls["c1"] = Call.taken_over(snap)
    session = hub.session(call)
    session.resume()
    assert all(m.grace is None for m in session.members.values())
    session.hold_places()
    assert {pid for pid, m in session.members.items() if m.grace is not None} == {"pat", "doc"}
    assert all(m.present for m in session.members.values())
    session.hold_places()  # once only: a second call does not restart a grace
    await hub.end("c1")


async def test_an_expired_watchdog_tells_everyone_in_its_own_callback(tmp_path: Path) -> None:
    """The watchdog's verdict reaches every socket within the timer callback itself, not
    a loop turn later behind a task (200 calls failing together were told up to 160 ms
    late); the media is released after, and the MIS hears call.failed once."""
    hub, media = make_hub(tmp_path)
    call = consultation(hub)
    sockets, session = await negotiated(hub, call)
    heard: list[str] = []
    hub.hooks.append(lambda event, c, data: heard.append(event))
    expired = session.watchdog.check(session.timer.now() + 3600.0)
    assert expired is not None
    session._on_watchdog(expired)  # as the timer calls it: synchronously
    for sock in sockets.values():
        assert sock.types()[-1] == "callFailed"  # before any await
    assert call.state is CallState.FAILED and call.failure is FailureReason.NO_MEDIA
    await asyncio.gather(*list(hub.background.tasks))
    assert media[call.id].closed == [False] and heard.count("call.failed") == 1


async def test_a_taken_over_call_holds_the_turn_slots_of_those_who_were_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process taking a call over leases (and so renews from then on) the TURN slot
    of everyone who was in, before they come back: the dead process renewed nothing.
    The media adoption is replaced here (FakeMedia has no pipeline to claim);
    tests/test_takeover_functional.py adopts real media."""
    turn = FakeTurn()
    hub, _ = make_hub(tmp_path, grace=30.0, turn=turn)

    async def adopted(*args: Any) -> None:
        return None

    monkeypatch.setattr(takeover, "adopt", adopted)
    snap = {"id": "c1", "kind": "consultation", "state": "live", "createdAt": 1.0,
            "mediaServer": "ws://kms", "mediaPipeline": "p1", "timeline": [],
            "participants": [
                {"id": "pat", "name": "P", "role": "patient", "state": "connected",
                 "published": ["audio", "video"]},
                {"id": "doc", "name": "D", "role": "doctor", "state": "left"}]}
    call = await takeover.take_over(hub, snap)
    assert set(turn.out) == {"c1/pat"}
    assert hub.sessions["c1"].members["pat"].lease is turn.out["c1/pat"]
    await hub.end(call.id)
    assert turn.released == ["c1/pat"]
