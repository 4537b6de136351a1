"""`ParticipantSession`: what one participant holds in a running call, released in one place.

Its socket, its TURN lease, the timer of its rejoin grace, the sources its browser reported
media from, its interrupted flows and whether its recorder records. `close()` lets go of all
of it, so no exit path cleans a participant by hand.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from signaling.liveness import MediaLoss
from signaling.participant import Participant, ParticipantState
from turn.lease import TurnLease

__all__ = ["Connection", "ParticipantSession"]


class Connection(Protocol):
    def send(self, text: str) -> None: ...

    def close_soon(self) -> None:
        """Closes the socket once what was sent before has gone out."""


@dataclass(eq=False)
class ParticipantSession:
    participant: Participant
    loss: MediaLoss
    conn: Connection | None = None
    lease: TurnLease | None = None
    #: Runs out the rejoin grace after the socket dropped without a `leave`.
    grace: asyncio.TimerHandle | None = None
    #: Sources whose media this participant's browser reported arriving.
    reported: set[str] = field(default_factory=set)
    recording: bool = False

    @property
    def id(self) -> str:
        return self.participant.id

    @property
    def reconnecting(self) -> bool:
        return self.grace is not None

    @property
    def present(self) -> bool:
        """Connected, or holding its place during the rejoin grace."""
        return self.conn is not None or self.grace is not None

    def stop_grace(self) -> bool:
        """Ends a rejoin grace; True if one was running."""
        if self.grace is None:
            return False
        self.grace.cancel()
        self.grace = None
        return True

    def forget_media(self) -> None:
        """Its endpoints are gone: what they proved no longer holds."""
        self.reported.clear()
        self.recording = False
        self.loss.stopped.clear()

    def close(self) -> TurnLease | None:
        """Lets go of everything; returns the lease for the caller to give back (that
        awaits, and a close must not). Idempotent."""
        self.stop_grace()
        self.conn = None
        self.forget_media()
        lease, self.lease = self.lease, None
        if self.participant.state is not ParticipantState.LEFT:
            self.participant.transition(ParticipantState.LEFT)
        return lease
