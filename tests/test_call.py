"""Call and participant lifecycles: every legal move works, every illegal one raises."""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from signaling.call import TRANSITIONS, Call, CallKind, CallState, FailureReason, IllegalTransition
from signaling.participant import TRANSITIONS as P_TRANSITIONS
from signaling.participant import Participant, ParticipantState

PATHS = {
    CallState.CREATED: [],
    CallState.RINGING: [CallState.RINGING],
    CallState.CONNECTING: [CallState.CONNECTING],
    CallState.LIVE: [CallState.CONNECTING, CallState.LIVE],
    CallState.ENDED: [CallState.ENDED],
    CallState.FAILED: [CallState.FAILED],
}


def call_in(state: CallState) -> Call:
    call = Call(kind=CallKind.CONSULTATION)
    for step in PATHS[state]:
        call.transition(step, reason=FailureReason.NO_MEDIA if step is CallState.FAILED else None)
    return call


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(CallState, CallState)))
def test_call_transitions_follow_the_table(src: CallState, dst: CallState) -> None:
    """Each call move the table allows succeeds and is timelined; any other raises, state kept."""
    call = call_in(src)
    reason = FailureReason.NO_MEDIA if dst is CallState.FAILED else None
    if dst in TRANSITIONS[src]:
        call.transition(dst, reason=reason, detail="d")
        assert call.state is dst
        assert call.timeline.as_list()[-1]["state"] == dst.value
    else:
        with pytest.raises(IllegalTransition):
            call.transition(dst, reason=reason)
        assert call.state is src


def test_failure_needs_a_reason_and_only_failure_takes_one() -> None:
    """A failure needs a reason and keeps it with its detail; an end with a reason is refused."""
    with pytest.raises(IllegalTransition):
        call_in(CallState.CONNECTING).transition(CallState.FAILED)
    with pytest.raises(IllegalTransition):
        call_in(CallState.CONNECTING).transition(CallState.ENDED, reason=FailureReason.NO_MEDIA)
    call = call_in(CallState.LIVE)
    call.transition(CallState.FAILED, reason=FailureReason.MEDIA_SERVER_LOST, detail="kms-1")
    assert call.failure is FailureReason.MEDIA_SERVER_LOST and call.failure_detail == "kms-1"
    assert call.finished


def test_the_timeline_is_bounded_and_counts_what_it_dropped() -> None:
    """Past its limit the timeline drops its oldest entries and counts them."""
    call = Call(kind=CallKind.CONFERENCE)
    call.timeline.limit = 5
    for i in range(10):
        call.timeline.add("x", i=i)
    assert len(call.timeline.as_list()) == 5 and call.timeline.dropped == 6


@pytest.mark.parametrize(("src", "dst"),
                         list(itertools.product(ParticipantState, ParticipantState)))
def test_participant_transitions_follow_the_table(src: ParticipantState,
                                                  dst: ParticipantState) -> None:
    """An allowed participant move is timelined with the state it left; others raise, unwritten."""
    call = Call(kind=CallKind.CONSULTATION)
    p = call.add_participant("p", "n", "patient")
    p.state = src
    before = len(call.timeline.as_list())
    if dst in P_TRANSITIONS[src]:
        p.transition(dst)
        assert p.state is dst
        assert call.timeline.as_list()[-1] == {
            "at": call.timeline.as_list()[-1]["at"], "event": "participant",
            "participant": "p", "state": dst.value, "was": src.value}
    else:
        with pytest.raises(IllegalTransition):
            p.transition(dst)
        assert p.state is src and len(call.timeline.as_list()) == before


def test_participants_given_to_a_call_write_to_its_timeline() -> None:
    """Participants passed in when a call is built are tied to its timeline and its id."""
    call = Call(kind=CallKind.CONFERENCE,
                participants={"d": Participant(id="d", name="D", role="doctor")})
    call.participants["d"].transition(ParticipantState.CONNECTING)
    assert call.timeline.as_list()[-1]["event"] == "participant"
    assert call.participants["d"].call_id == call.id


def test_a_new_call_opens_its_timeline_with_its_state_and_kind() -> None:
    """A new call's first timeline entry is `created` with its kind, stamped by the wall clock."""
    before = time.time()
    call = Call(kind=CallKind.REFERRAL)
    first = call.timeline.as_list()[0]
    assert first == {"at": first["at"], "event": "state", "state": "created",
                     "kind": "referral"}
    assert before <= first["at"] <= time.time()


def test_a_timeline_entry_takes_the_time_given_or_the_wall_clock() -> None:
    """An entry given a time keeps it (even 0); one given none is stamped now."""
    call = Call(kind=CallKind.CONSULTATION)
    call.timeline.add("x", 0.0, a=1)
    call.timeline.add("y", 12.5)
    before = time.time()
    call.timeline.add("z")
    entries = call.timeline.as_list()[-3:]
    assert entries[0] == {"at": 0.0, "event": "x", "a": 1}
    assert entries[1] == {"at": 12.5, "event": "y"}
    assert before <= entries[2]["at"] <= time.time()


def test_a_state_change_is_written_with_its_time_and_only_a_failure_with_a_reason() -> None:
    """A move is stamped with the time given; only a failure's entry has reason and detail."""
    call = Call(kind=CallKind.CONSULTATION)
    call.transition(CallState.CONNECTING, now=50.0)
    assert call.timeline.as_list()[-1] == {"at": 50.0, "event": "state",
                                          "state": "connecting"}
    call.transition(CallState.FAILED, reason=FailureReason.TURN_EXHAUSTED, now=51.0)
    assert call.timeline.as_list()[-1] == {"at": 51.0, "event": "state", "state": "failed",
                                          "reason": "turn-exhausted", "detail": ""}
    assert call.failure_detail == ""


def test_finish_ends_without_a_reason_and_fails_with_one() -> None:
    """finish(None) ends the call; finish(reason, detail) fails it keeping both (detail '')."""
    ended = call_in(CallState.LIVE)
    ended.finish(None)
    assert ended.state is CallState.ENDED and ended.failure is None
    failed = call_in(CallState.CONNECTING)
    failed.finish(FailureReason.DECLINED, "said no")
    assert failed.state is CallState.FAILED and failed.failure is FailureReason.DECLINED
    assert failed.failure_detail == "said no"
    assert failed.timeline.as_list()[-1]["detail"] == "said no"
    bare = call_in(CallState.RINGING)
    bare.finish(FailureReason.RING_TIMEOUT)
    assert bare.failure_detail == "" and bare.timeline.as_list()[-1]["detail"] == ""


def test_a_refused_call_move_names_the_call_and_both_states() -> None:
    """An illegal call move's error names the call and both states, or the missing reason."""
    call = call_in(CallState.ENDED)
    with pytest.raises(IllegalTransition, match=rf"^call {call.id}: ended -> live$"):
        call.transition(CallState.LIVE)
    live = call_in(CallState.CONNECTING)
    with pytest.raises(IllegalTransition, match=rf"^call {live.id}: a failure needs a reason"):
        live.transition(CallState.FAILED)


def test_a_call_move_is_logged_with_the_call_id(caplog: pytest.LogCaptureFixture) -> None:
    """Each call move logs `= from -> to reason` with the call_id field operators filter on."""
    caplog.set_level(logging.INFO, logger="signaling.call")
    call = call_in(CallState.CONNECTING)
    caplog.clear()
    call.transition(CallState.LIVE)
    call.transition(CallState.FAILED, reason=FailureReason.MEDIA_SERVER_LOST, detail="kms")
    records = [r for r in caplog.records if r.name == "signaling.call"]
    assert [r.getMessage() for r in records] == ["= connecting -> live ",
                                                 "= live -> failed media-server-lost"]
    assert all(getattr(r, "call_id", None) == call.id for r in records)


def test_a_participant_is_made_with_its_name_role_and_call() -> None:
    """`add_participant` keeps who it is and ties it to the call's id and timeline."""
    call = Call(kind=CallKind.CONSULTATION)
    p = call.add_participant("u1", "Anna", "doctor")
    assert (p.id, p.name, p.role, p.call_id) == ("u1", "Anna", "doctor", call.id)
    assert call.participants == {"u1": p}


def test_a_refused_participant_move_names_the_participant_and_both_states() -> None:
    """The error of an illegal participant move says who and which move."""
    p = Call(kind=CallKind.CONSULTATION).add_participant("u1", "Anna", "doctor")
    with pytest.raises(IllegalTransition, match=r"^participant u1: invited -> connected$"):
        p.transition(ParticipantState.CONNECTED)


def test_a_participant_move_is_logged_with_the_call_and_participant(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each participant move logs who went from where to where, with call_id and participant."""
    caplog.set_level(logging.INFO, logger="signaling.participant")
    call = Call(kind=CallKind.CONSULTATION)
    p = call.add_participant("u1", "Anna", "doctor")
    p.transition(ParticipantState.CONNECTING)
    records = [r for r in caplog.records if r.name == "signaling.participant"]
    assert [r.getMessage() for r in records] == ["= participant u1: invited -> connecting"]
    assert getattr(records[0], "call_id", None) == call.id
    assert getattr(records[0], "participant", None) == "u1"


def test_a_participant_not_in_a_call_moves_without_a_timeline() -> None:
    """A participant with no call's timeline still moves (nothing to write to)."""
    p = Participant(id="x", name="X", role="patient")
    p.transition(ParticipantState.CONNECTING)
    assert p.state is ParticipantState.CONNECTING


def test_describe_gives_the_call_and_its_participants_as_the_api_shows_them() -> None:
    """describe() gives every field under its wire name, enums as values, empty detail as null."""
    call = Call(kind=CallKind.CONSULTATION, media_server="kms-1", metadata={"room": "4"},
                schedule={"start": 1.0, "end": 2.0}, created_at=100.0)
    doc = call.add_participant("doc", "D", "doctor")
    doc.published = frozenset({"video", "audio"})
    call.add_participant("pat", "P", "patient")
    assert call.describe() == {
        "id": call.id, "kind": "consultation", "state": "created", "failure": None,
        "failureDetail": None, "mediaServer": "kms-1", "mediaPipeline": None, "node": None,
        "epoch": None,
        "participants": [
            {"id": "doc", "name": "D", "role": "doctor", "state": "invited",
             "published": ["audio", "video"]},
            {"id": "pat", "name": "P", "role": "patient", "state": "invited",
             "published": []}],
        "createdAt": 100.0, "metadata": {"room": "4"}, "schedule": {"start": 1.0, "end": 2.0},
        "maxParticipants": 2,
    }
    call.transition(CallState.FAILED, reason=FailureReason.INTERNAL, detail="boom")
    described = call.describe()
    assert (described["state"], described["failure"], described["failureDetail"]) == (
        "failed", "internal", "boom")
