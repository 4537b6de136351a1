"""Referral ringing: which consultant's workstation rings for which call, and its timer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.errors import CallError
from signaling.participant import Participant
from signaling.presence import Presence
from signaling.protocol import encode
from signaling.tokens import JoinClaims

__all__ = ["Referrals", "Ring", "RingHost", "Ringing"]


@dataclass
class Ring:
    caller: str
    callee: str
    timer: asyncio.TimerHandle


class Ringing:
    """The rings in progress, one per call at most."""

    def __init__(self) -> None:
        self.rings: dict[str, Ring] = {}

    def start(self, call_id: str, ring: Ring) -> None:
        self.rings[call_id] = ring

    def rung(self, call_id: str, subject: str) -> Ring:
        """The ring `subject` may answer."""
        ring = self.rings.get(call_id)
        if ring is None or ring.callee != subject:
            raise CallError("nothing is ringing for you", code="call.not_ringing")
        return ring

    def ringing_from(self, call_id: str, subject: str) -> Ring:
        """The ring `subject` may cancel."""
        ring = self.rings.get(call_id)
        if ring is None or ring.caller != subject:
            raise CallError("you are not ringing anyone", code="call.not_ringing")
        return ring

    def stop(self, call_id: str) -> Ring | None:
        ring = self.rings.pop(call_id, None)
        if ring is not None:
            ring.timer.cancel()
        return ring

    def __contains__(self, call_id: object) -> bool:
        return call_id in self.rings


class RingHost(Protocol):
    """What referral ringing needs from the hub."""

    presence: Presence
    calls: dict[str, Call]

    def lookup(self, claims: JoinClaims) -> tuple[Call, Participant]: ...
    def tell(self, call_id: str, pid: str, text: str) -> None: ...
    def spawn(self, coro: Awaitable[Any], call_id: str) -> None: ...
    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None: ...


class Referrals:
    """A doctor rings a consultant's workstation; they accept, decline or let it time out."""

    def __init__(self, host: RingHost, *, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        self.ringing = Ringing()

    def ring(self, claims: JoinClaims, target: str) -> dict[str, Any]:
        call, caller = self.host.lookup(claims)
        if call.kind is not CallKind.REFERRAL:
            raise CallError("only a referral rings", code="call.not_referral")
        if caller.role != "doctor":
            raise CallError("only the referring doctor rings", code="call.not_allowed")
        callee = call.participants.get(target)
        if callee is None or callee.id == caller.id:
            raise CallError("no such participant to ring", code="participant.not_found")
        if call.state is not CallState.CREATED:
            raise CallError(f"the call is {call.state.value}", code="call.state")
        conn = self.host.presence.get(call.id, target)
        if conn is None:
            raise CallError(f"{callee.name} is not online", code="participant.offline")
        call.transition(CallState.RINGING)
        call.timeline.add("ring", participant=caller.id, target=target)
        timer = asyncio.get_running_loop().call_later(
            self.timeout, lambda: self.host.spawn(self.stop(
                call.id, "ringTimeout", FailureReason.RING_TIMEOUT,
                f"no answer within {self.timeout:g} s"), call.id))
        self.ringing.start(call.id, Ring(caller.id, target, timer))
        conn.send(encode("incomingCall", call=call.id, kind=call.kind.value,
                         caller=caller.describe(), timeout=self.timeout))
        return {"participant": target, "timeout": self.timeout}

    def accept(self, claims: JoinClaims) -> None:
        call, _ = self.host.lookup(claims)
        ring = self.ringing.rung(call.id, claims.subject)
        self.ringing.stop(call.id)
        call.transition(CallState.CONNECTING)
        call.timeline.add("accepted", participant=claims.subject)
        self.host.tell(call.id, ring.caller, encode("ringAccepted", participant=claims.subject))

    async def decline(self, claims: JoinClaims) -> None:
        self.host.lookup(claims)
        self.ringing.rung(claims.call_id, claims.subject)
        await self.stop(claims.call_id, "ringDeclined", FailureReason.DECLINED,
                        f"{claims.subject} declined")

    async def cancel(self, claims: JoinClaims) -> None:
        self.host.lookup(claims)
        self.ringing.ringing_from(claims.call_id, claims.subject)
        await self.stop(claims.call_id, "ringCancelled", None, "caller cancelled")

    async def caller_left(self, call_id: str, subject: str) -> None:
        ring = self.ringing.rings.get(call_id)
        if ring is not None and subject == ring.caller:
            # Nobody is left to talk to whoever picks up.
            await self.stop(call_id, "ringCancelled", None, "caller left")

    async def stop(self, call_id: str, event: str, reason: FailureReason | None,
                   detail: str) -> None:
        ring = self.ringing.stop(call_id)
        if ring is None:
            return
        call = self.host.calls[call_id]
        call.timeline.add(event, participant=ring.callee, detail=detail)
        told = ring.callee if event in ("ringCancelled", "ringTimeout") else ring.caller
        self.host.tell(call_id, told, encode(event, participant=ring.callee))
        if event == "ringTimeout":
            self.host.tell(call_id, ring.caller, encode(event, participant=ring.callee))
        await self.host.end(call_id, reason, detail)
