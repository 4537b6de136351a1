"""`Participant`: someone the MIS invited to a call, and their connection state."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["EventLog", "IllegalTransition", "Participant", "ParticipantState"]

log = logging.getLogger(__name__)


class IllegalTransition(RuntimeError):
    """A state change its table does not allow: a bug, never a client's fault."""


class EventLog(Protocol):
    """Where state changes are written: the call's `Timeline`."""

    def add(self, what: str, now: float | None = None, **data: Any) -> None: ...


class ParticipantState(enum.StrEnum):
    INVITED = "invited"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: The connection dropped; the participant may rejoin within the grace period.
    RECONNECTING = "reconnecting"
    LEFT = "left"


TRANSITIONS: dict[ParticipantState, frozenset[ParticipantState]] = {
    ParticipantState.INVITED: frozenset({ParticipantState.CONNECTING, ParticipantState.LEFT}),
    ParticipantState.CONNECTING: frozenset({ParticipantState.CONNECTED, ParticipantState.LEFT,
                                            ParticipantState.RECONNECTING}),
    # A new socket for someone already in the call replaces the old one.
    ParticipantState.CONNECTED: frozenset({ParticipantState.LEFT, ParticipantState.CONNECTING,
                                           ParticipantState.RECONNECTING}),
    ParticipantState.RECONNECTING: frozenset({ParticipantState.CONNECTING,
                                              ParticipantState.LEFT}),
    # A participant who left may come back to the same call with a new connection.
    ParticipantState.LEFT: frozenset({ParticipantState.CONNECTING}),
}


@dataclass
class Participant:
    id: str  # the MIS user id (the token's subject)
    name: str
    role: str
    state: ParticipantState = ParticipantState.INVITED
    published: frozenset[str] = frozenset()  # media kinds this participant sends
    joins: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: The call's timeline; `Call.add_participant` sets it.
    events: EventLog | None = field(default=None, repr=False, compare=False)
    call_id: str = ""

    def transition(self, to: ParticipantState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"participant {self.id}: {self.state} -> {to}")
        log.info("= participant %s: %s -> %s", self.id, self.state.value, to.value,
                 extra={"call_id": self.call_id, "participant": self.id})
        was, self.state = self.state, to
        if self.events is not None:
            self.events.add("participant", participant=self.id, state=to.value,
                            was=was.value)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "state": self.state.value,
                "published": sorted(self.published),
                # Kept with the call so that a removal outlives a restart of the service.
                **({"removed": True} if self.extra.get("removed") else {})}
