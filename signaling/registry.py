"""`CallRegistry`: the calls this node knows and the sessions that run them.

A call is created here (or loaded, booked by an earlier run or another node, from the
repository), found for a participant's token, and given its `CallSession` on first use.
The hub's settings are read through `RegistryHost` at each use, so a change to one (a test
shortening the watchdog) reaches the next session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from kurento_ctl.pool import KurentoPool
from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.call_session import CallServices, CallSession
from signaling.candidates import CandidateFilter, CandidatePolicy
from signaling.errors import CallError
from signaling.events import CallEvent
from signaling.media import CallMedia
from signaling.media_events import media_listener
from signaling.participant import Participant
from signaling.participant_session import Connection
from signaling.placement import Placement
from signaling.presence import Presence
from signaling.tokens import JoinClaims
from turn.lease import TurnLease
from turn.pool import TurnPool

__all__ = ["CallRegistry", "CallRepository", "MediaFactory", "RegistryHost"]

# The hub's logger, as before the split: whichever part of the hub speaks.
log = logging.getLogger("signaling.hub")

MediaFactory = Callable[[Call, Path, Any], CallMedia]


class CallRepository(Protocol):
    """Where calls are kept beyond this process (the history in Redis)."""

    async def get(self, call_id: str) -> dict[str, Any] | None: ...


class RegistryHost(Protocol):
    """What the registry reads from the hub: its state and its settings."""

    calls: dict[str, Call]
    sessions: dict[str, CallSession]
    pool: KurentoPool
    node_id: str
    #: Several nodes: gives the fencing epoch a call runs under here.
    placement: Placement | None
    presence: Presence
    recordings_root: Path
    min_free_bytes: int
    free_bytes: Callable[[Path], int]
    max_conference_size: int
    repository: CallRepository | None
    store_timeout: float
    candidate_policy: CandidatePolicy
    turn: TurnPool | None
    watchdog_timeout: float
    rejoin_grace: float
    media_loss_report: float

    def emit(self, event: CallEvent, call: Call, data: dict[str, Any]) -> None: ...
    def spawn(self, coro: Awaitable[Any], call_id: str) -> None: ...
    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None: ...
    def end_soon(self, call_id: str, reason: FailureReason | None = None,
                 detail: str = "") -> None: ...


class CallRegistry:
    def __init__(self, host: RegistryHost, media_factory: MediaFactory | None = None) -> None:
        self.host = host
        self.media_factory = media_factory or self._kurento_media

    def create(self, kind: CallKind, participants: list[tuple[str, str, str]],
               metadata: dict[str, Any] | None = None,
               schedule: dict[str, float] | None = None) -> Call:
        host = self.host
        host.recordings_root.mkdir(parents=True, exist_ok=True)
        free = host.free_bytes(host.recordings_root)
        if free < host.min_free_bytes:
            # A call that cannot be recorded must not happen at all.
            log.error("! refusing a call: %d bytes free for recordings, %d required", free,
                      host.min_free_bytes)
            raise CallError("the recordings volume is full; calls are refused until space "
                            "is freed", code="recording.disk_full")
        size = host.max_conference_size if kind is CallKind.CONFERENCE else 2
        if len(participants) > size:
            raise CallError(f"a {kind.value} takes at most {size} participants",
                            code="call.full")
        call = Call(kind=kind, max_participants=size, metadata=metadata or {},
                    schedule=schedule)
        for pid, name, role in participants:
            call.add_participant(pid, name, role)
        host.calls[call.id] = call
        host.emit(CallEvent.CREATED, call, {})
        return call

    async def load(self, call_id: str) -> Call | None:
        """The call, from memory or, booked by an earlier run or another node, from the
        repository. Only calls nobody is in yet come back; finished ones stay history."""
        calls, repository = self.host.calls, self.host.repository
        call = calls.get(call_id)
        if call is not None or repository is None:
            return call
        try:
            async with asyncio.timeout(self.host.store_timeout):
                snap = await repository.get(call_id)
        except Exception as exc:
            log.error("! cannot read call %s from the store: %s", call_id, type(exc).__name__)
            raise CallError("the call store cannot be reached; retry shortly",
                            code="service.unavailable") from None
        if snap is None or snap.get("state") not in (CallState.CREATED, CallState.RINGING):
            return None
        # Another request may have loaded it while this one awaited the store.
        call = calls.get(call_id)
        if call is None:
            call = calls[call_id] = Call.from_snapshot(snap)
            log.info("= booked call restored from the store", extra={"call_id": call_id})
        return call

    def lookup(self, claims: JoinClaims) -> tuple[Call, Participant]:
        call = self.host.calls.get(claims.call_id)
        if call is None:
            raise CallError("no such call", code="call.not_found")
        if call.finished:
            raise CallError("the call is over", code="call.ended")
        participant = call.participants.get(claims.subject)
        if participant is None:
            raise CallError("you are not a participant of this call", code="call.not_yours")
        if participant.extra.get("removed"):
            raise CallError("you were removed from this call", code="call.removed")
        return call, participant

    def _kurento_media(self, call: Call, folder: Path, listener: Any) -> CallMedia:
        return CallMedia(call.id, self.host.pool, folder, listener,
                         CandidateFilter(self.host.candidate_policy))

    def session(self, call: Call) -> CallSession:
        """The running call, set up on first use (a join, or a pre-call network check)."""
        host = self.host
        session = host.sessions.get(call.id)
        if session is None:
            folder = host.recordings_root / time.strftime("%Y/%m/%d") / call.id
            holder: list[CallSession] = []
            media = self.media_factory(call, folder, media_listener(
                lambda event: holder[0].on_media(event),
                lambda pid, text: holder[0].send(pid, text)))
            session = CallSession(call, media, CallServices(
                turn=host.turn, watchdog_timeout=host.watchdog_timeout,
                rejoin_grace=host.rejoin_grace, media_loss_report=host.media_loss_report,
                emit=host.emit, spawn=host.spawn, end=host.end, end_soon=host.end_soon,
                revoke=self.revoke))
            holder.append(session)
            host.sessions[call.id] = session
            call.node = host.node_id
            if host.placement is not None:
                call.epoch = host.placement.epoch(call.id)
        return session

    def lease_renewed(self, fresh: TurnLease) -> None:
        session = self.host.sessions.get(fresh.call_id)
        if session is not None:
            session.lease_renewed(fresh)

    async def revoke(self, lease: TurnLease, release: bool = True) -> None:
        """Returns a lease (or only revokes replaced credentials); never raises."""
        turn = self.host.turn
        if turn is None:
            return
        try:
            if release:
                await turn.release(lease)
            else:
                await turn.provider.revoke(lease)
        except Exception:
            log.exception("! returning TURN lease %s failed; it expires on its own",
                          lease.key, extra={"call_id": lease.call_id})

    def client_event(self, conn: Connection, call_id: str, pid: str, event: str,
                     data: dict[str, Any]) -> None:
        """A browser's diagnostic event: on its call's timeline (and its verdicts) once it
        joined; before that, only on the timeline of the call it said hello to."""
        host = self.host
        session = host.sessions.get(call_id)
        m = session.members.get(pid) if session else None
        if session is not None and m is not None and m.conn is conn and not session.closing:
            session.client_event(pid, event, data)
            return
        call = host.calls.get(call_id)
        if call is None or call.finished or host.presence.get(call_id, pid) is not conn:
            raise CallError("not in that call", code="call.not_found")
        kept = {k: data[k] for k in list(data)[:16]}
        call.timeline.add(f"client.{event}"[:64], participant=pid, data=kept, joined=False)
