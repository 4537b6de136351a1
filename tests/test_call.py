"""Call and participant lifecycles: every legal move works, every illegal one raises."""

from __future__ import annotations

import itertools

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
    with pytest.raises(IllegalTransition):
        call_in(CallState.CONNECTING).transition(CallState.FAILED)
    with pytest.raises(IllegalTransition):
        call_in(CallState.CONNECTING).transition(CallState.ENDED, reason=FailureReason.NO_MEDIA)
    call = call_in(CallState.LIVE)
    call.transition(CallState.FAILED, reason=FailureReason.MEDIA_SERVER_LOST, detail="kms-1")
    assert call.failure is FailureReason.MEDIA_SERVER_LOST and call.failure_detail == "kms-1"
    assert call.finished


def test_the_timeline_is_bounded_and_counts_what_it_dropped() -> None:
    call = Call(kind=CallKind.CONFERENCE)
    call.timeline.limit = 5
    for i in range(10):
        call.timeline.add("x", i=i)
    assert len(call.timeline.as_list()) == 5 and call.timeline.dropped == 6


@pytest.mark.parametrize(("src", "dst"),
                         list(itertools.product(ParticipantState, ParticipantState)))
def test_participant_transitions_follow_the_table(src: ParticipantState,
                                                  dst: ParticipantState) -> None:
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
    call = Call(kind=CallKind.CONFERENCE,
                participants={"d": Participant(id="d", name="D", role="doctor")})
    call.participants["d"].transition(ParticipantState.CONNECTING)
    assert call.timeline.as_list()[-1]["event"] == "participant"
