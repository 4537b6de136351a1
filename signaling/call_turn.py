"""A call's TURN leases: one per participant, taken before `join`, renewed while the call
runs, and handed to the media server in the form Kurento reads. A part of `CallSession`,
kept apart because it is the TURN half of the call."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from signaling.call import Call
from signaling.errors import CallError, MediaError
from signaling.protocol import encode
from turn.lease import (
    KurentoTurnUrlError,
    TurnExhausted,
    TurnLease,
    ice_servers_for,
    kurento_turn_url,
)

if TYPE_CHECKING:
    from signaling.call_session import CallServices
    from signaling.participant_session import ParticipantSession

__all__ = ["CallTurn"]

# One logger for the call, whichever part of it speaks.
log = logging.getLogger("signaling.call_session")


class CallTurn:
    call: Call
    services: CallServices
    members: dict[str, ParticipantSession]
    closing: bool

    if TYPE_CHECKING:
        def member(self, pid: str) -> ParticipantSession: ...
        def send(self, pid: str, text: str) -> None: ...

    async def lease_turn(self, pid: str) -> TurnLease | None:
        turn = self.services.turn
        if turn is None:
            return None
        try:
            lease = await turn.lease(self.call.id, pid)
        except TurnExhausted as exc:
            self.call.timeline.add("turn-exhausted", participant=pid)
            raise CallError(str(exc), code="turn.exhausted") from None
        except (RedisError, OSError) as exc:
            log.error("! TURN pool unreachable: %s", type(exc).__name__,
                      extra={"call_id": self.call.id})
            raise CallError("TURN credentials are unavailable", code="turn.exhausted") from None
        m = self.member(pid)
        old = m.lease
        if old is not None and old.username != lease.username:
            await self.services.revoke(old, False)
        m.lease = lease
        return lease

    def lease_renewed(self, fresh: TurnLease) -> None:
        """Renewed credentials reach the browser, so a peer connection it opens hours into
        a call (a late subscription, an ICE restart) still gets a relay."""
        m = self.members.get(fresh.participant)
        if self.closing or m is None or m.lease is None:
            return
        m.lease = fresh
        self.call.timeline.add("turn-renewed", participant=fresh.participant,
                               expires=int(fresh.expires))
        self.send(fresh.participant, encode("iceServers", iceServers=ice_servers_for(fresh)))

    def _kurento_turn(self, pid: str) -> str | None:
        lease = self.member(pid).lease
        if lease is None:
            return None
        try:
            return kurento_turn_url(lease)
        except KurentoTurnUrlError as exc:
            # Kurento would take the URL and silently run without TURN: refused here, before
            # the media layer is touched, so the call and the others' media are unharmed.
            log.error("! %s", exc, extra={"call_id": self.call.id})
            self.call.timeline.add("turn-unusable", participant=pid)
            raise MediaError("the media server cannot be given your TURN credentials "
                             "(a configuration problem on our side)",
                             code="turn.unusable") from None
