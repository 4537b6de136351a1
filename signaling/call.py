"""`Call` and its lifecycle: one entry point for every state change, each one on the timeline."""

from __future__ import annotations

import enum
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from signaling.participant import IllegalTransition, Participant, ParticipantState
from signaling.timeline import Timeline

__all__ = ["Call", "CallKind", "CallState", "FailureReason", "IllegalTransition", "Timeline"]

log = logging.getLogger(__name__)


class CallKind(enum.StrEnum):
    CONSULTATION = "consultation"
    REFERRAL = "referral"
    CONFERENCE = "conference"


class CallState(enum.StrEnum):
    CREATED = "created"
    RINGING = "ringing"
    CONNECTING = "connecting"
    LIVE = "live"
    ENDED = "ended"
    FAILED = "failed"


class FailureReason(enum.StrEnum):
    NO_MEDIA = "no-media"
    MEDIA_SERVER_LOST = "media-server-lost"
    RECORDING_FAILED = "recording-failed"
    TURN_EXHAUSTED = "turn-exhausted"
    DECLINED = "declined"
    RING_TIMEOUT = "ring-timeout"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"
    #: Nobody joined before the appointment window (plus `calls.schedule_overrun`) closed,
    #: or, unscheduled, within `calls.idle_expiry` of its creation.
    EXPIRED = "expired"


TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.CREATED: frozenset({CallState.RINGING, CallState.CONNECTING, CallState.ENDED,
                                  CallState.FAILED}),
    CallState.RINGING: frozenset({CallState.CONNECTING, CallState.ENDED, CallState.FAILED}),
    CallState.CONNECTING: frozenset({CallState.LIVE, CallState.ENDED, CallState.FAILED}),
    CallState.LIVE: frozenset({CallState.ENDED, CallState.FAILED}),
    CallState.ENDED: frozenset(),
    CallState.FAILED: frozenset(),
}


@dataclass
class Call:
    kind: CallKind
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: CallState = CallState.CREATED
    participants: dict[str, Participant] = field(default_factory=dict)
    failure: FailureReason | None = None
    failure_detail: str = ""
    media_server: str | None = None
    #: The call's pipeline on `media_server`: what a process taking the call over claims.
    pipeline: str | None = None
    #: The signalling node running the call once someone is in it (`node.id`).
    node: str | None = None
    #: The fencing epoch under which `node` owns the call (several nodes); a summary
    #: written under an older one is refused.
    epoch: int | None = None
    max_participants: int = 2
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The appointment window the MIS gave, {"start", "end"} in unix seconds.
    schedule: dict[str, float] | None = None
    created_at: float = field(default_factory=time.time)
    timeline: Timeline = field(default_factory=Timeline)
    #: Rebuilt by a process that took the call over from one that died.
    taken_over_from_record: bool = False

    def __post_init__(self) -> None:
        self.timeline.add("state", state=self.state.value, kind=self.kind.value)
        for participant in self.participants.values():
            participant.events, participant.call_id = self.timeline, self.id

    def add_participant(self, pid: str, name: str, role: str) -> Participant:
        """A participant whose every state change lands on this call's timeline."""
        participant = self.participants[pid] = Participant(
            id=pid, name=name, role=role, events=self.timeline, call_id=self.id)
        return participant

    @property
    def finished(self) -> bool:
        return self.state in (CallState.ENDED, CallState.FAILED)

    def transition(self, to: CallState, *, reason: FailureReason | None = None,
                   detail: str = "", now: float | None = None) -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"call {self.id}: {self.state} -> {to}")
        if (to is CallState.FAILED) != (reason is not None):
            raise IllegalTransition(f"call {self.id}: a failure needs a reason, nothing else does")
        log.info("= %s -> %s %s", self.state.value, to.value, reason.value if reason else "",
                 extra={"call_id": self.id})
        self.state = to
        if reason is not None:
            self.failure, self.failure_detail = reason, detail
        self.timeline.add("state", now, state=to.value,
                          **({"reason": reason.value, "detail": detail} if reason else {}))

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> Call:
        """A booked call as the history stored it, for a process that did not create it.

        Only calls nobody is in yet come back this way: a ring in progress is not (its
        ringing workstation's socket went with the process), so `ringing` returns as
        `created` and every participant as invited.
        """
        state = CallState(snap["state"])
        if state not in (CallState.CREATED, CallState.RINGING):
            raise ValueError(f"a {state.value} call cannot be restored from its snapshot")
        call = cls(kind=CallKind(snap["kind"]), id=snap["id"],
                   metadata=dict(snap.get("metadata") or {}), schedule=snap.get("schedule"),
                   created_at=float(snap["createdAt"]),
                   max_participants=int(snap.get("maxParticipants")
                                        or len(snap["participants"])))
        # Its history goes on where the stored one stopped, numbered on from there.
        call.timeline.restore(snap.get("timeline") or [], int(snap.get("timelineSeq") or 0),
                              int(snap.get("clientEventsDropped") or 0))
        for p in snap["participants"]:
            participant = call.add_participant(p["id"], p["name"], p["role"])
            if p.get("removed"):
                participant.extra["removed"] = True
        call.timeline.add("restored", was=state.value)
        return call

    @classmethod
    def taken_over(cls, snap: dict[str, Any]) -> Call:
        """A call that had begun (`connecting`, `live`) when the process running it died,
        as the history stored it: everyone who was in is `reconnecting`, what they
        published still published (their media runs on in the media server)."""
        state = CallState(snap["state"])
        if state not in (CallState.CONNECTING, CallState.LIVE):
            raise ValueError(f"a {state.value} call cannot be taken over")
        call = cls(kind=CallKind(snap["kind"]), id=snap["id"], state=state,
                   metadata=dict(snap.get("metadata") or {}), schedule=snap.get("schedule"),
                   created_at=float(snap["createdAt"]), media_server=snap.get("mediaServer"),
                   pipeline=snap.get("mediaPipeline"), node=snap.get("node"),
                   max_participants=int(snap.get("maxParticipants")
                                        or len(snap["participants"])))
        call.timeline.restore(snap.get("timeline") or [], int(snap.get("timelineSeq") or 0),
                              int(snap.get("clientEventsDropped") or 0))
        was_in = {ParticipantState.CONNECTING.value, ParticipantState.CONNECTED.value,
                  ParticipantState.RECONNECTING.value}
        for p in snap["participants"]:
            participant = call.add_participant(p["id"], p["name"], p["role"])
            if p.get("removed"):
                participant.extra["removed"] = True
            # Restored, not lived through: set without a transition (none happened).
            if p.get("state") in was_in:
                participant.state = ParticipantState.RECONNECTING
                participant.published = frozenset(p.get("published") or ())
            elif p.get("state") == ParticipantState.LEFT.value:
                participant.state = ParticipantState.LEFT
        call.timeline.add("taken-over", was=state.value)
        call.taken_over_from_record = True
        return call

    def finish(self, reason: FailureReason | None, detail: str = "") -> None:
        """Ended, or failed when there is a reason."""
        if reason is None:
            self.transition(CallState.ENDED)
        else:
            self.transition(CallState.FAILED, reason=reason, detail=detail)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind.value, "state": self.state.value,
            "failure": self.failure.value if self.failure else None,
            "failureDetail": self.failure_detail or None, "mediaServer": self.media_server,
            "mediaPipeline": self.pipeline, "node": self.node, "epoch": self.epoch,
            "participants": [p.describe() for p in self.participants.values()],
            "createdAt": self.created_at, "metadata": self.metadata,
            "schedule": self.schedule, "maxParticipants": self.max_participants,
        }
