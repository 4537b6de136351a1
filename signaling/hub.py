"""`Hub`: the calls this node serves and who is connected to them; the facade that every
request, socket and timer goes through.

A router over a `CallRegistry` (`signaling.registry`: the calls, and one `CallSession` per
running call, which owns its media, watchdog and participants), referral ringing
(`signaling.ringing`), presence (`signaling.presence`) and `Teardown`
(`signaling.teardown`: the one path every exit takes). The call logic itself lives in
`signaling.call_session`.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from kurento_ctl.pool import KurentoPool
from signaling.background import Background, CallHook
from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.call_session import CallSession
from signaling.candidates import CandidatePolicy
from signaling.errors import CallElsewhere, CallError
from signaling.events import CallEvent
from signaling.participant import Participant
from signaling.participant_session import Connection
from signaling.placement import Placement, acting, in_doubt, place, precheck_elsewhere
from signaling.presence import Presence
from signaling.registry import CallRegistry, CallRepository, MediaFactory
from signaling.ringing import Referrals
from signaling.teardown import Teardown, fail_on_bug
from signaling.tokens import JoinClaims
from turn.lease import ice_servers_for
from turn.pool import TurnPool

__all__ = ["HUB", "Connection", "Hub"]


class Hub:
    def __init__(self, *, pool: KurentoPool, recordings_root: Path, watchdog_timeout: float,
                 candidate_policy: CandidatePolicy | None = None,
                 turn: TurnPool | None = None, max_conference_size: int = 8,
                 ring_timeout: float = 30.0, rejoin_grace: float = 20.0,
                 media_loss_report: float = 5.0, min_free_bytes: int = 0,
                 free_bytes: Callable[[Path], int] | None = None,
                 finished_linger: float = 300.0,
                 media_factory: MediaFactory | None = None,
                 repository: CallRepository | None = None,
                 node_id: str | None = None) -> None:
        self.pool = pool
        #: Named on each call this node runs, so that another node adopts it only once
        #: this one is gone.
        self.node_id = node_id or pool.node_id
        self.recordings_root = recordings_root
        self.watchdog_timeout = watchdog_timeout
        self.candidate_policy = candidate_policy or CandidatePolicy()
        self.turn = turn
        self.min_free_bytes = min_free_bytes
        self.free_bytes = free_bytes or (lambda path: shutil.disk_usage(path).free)
        self.max_conference_size = max_conference_size
        self.rejoin_grace = rejoin_grace
        self.media_loss_report = media_loss_report
        #: A finished call stays in memory this long (s), so late requests for it get
        #: `call.ended`; after that only the history (CallStore) knows it.
        self.finished_linger = finished_linger
        self.repository = repository
        #: A store that does not answer within this long counts as unreachable (s).
        self.store_timeout = 5.0
        #: Stopping, its calls left to the next start: sockets closing change nothing.
        self.suspended = False
        #: Whether a stop leaves the calls to the next start (with `calls.take_over`); a
        #: full stop (Ctrl-C, the media server going too) ends them instead.
        self.keep_calls_on_stop = True
        self.calls: dict[str, Call] = {}
        self.sessions: dict[str, CallSession] = {}
        self.presence = Presence()
        self.background = Background()
        self.hooks: list[CallHook] = self.background.hooks
        self.registry = CallRegistry(self, media_factory)
        self.referrals = Referrals(self, timeout=ring_timeout)
        self.teardown = Teardown(self)
        #: Several nodes (`cluster` sets them; signaling/placement.py says what they are).
        self.placement: Placement | None = None
        self.may_act: Callable[[str], bool] = lambda call_id: True
        self.on_suspend: list[Callable[[], Awaitable[None]]] = []
        pool.on_pipelines_lost(self.teardown.pipelines_lost)
        if turn is not None:
            turn.on_renewed.append(self.registry.lease_renewed)

    # ---------------------------------------------------------------- calls

    def create_call(self, kind: CallKind, participants: list[tuple[str, str, str]],
                    metadata: dict[str, Any] | None = None,
                    schedule: dict[str, float] | None = None) -> Call:
        return self.registry.create(kind, participants, metadata, schedule)

    def emit(self, event: CallEvent, call: Call, data: dict[str, Any]) -> None:
        """Tells every hook; a failing hook is logged and the others still hear it."""
        self.background.emit(event, call, data)

    def spawn(self, coro: Awaitable[Any], call_id: str) -> None:
        """A call's background task: its failure is logged with the call's id, and a bug in
        it fails the call `internal` (`fail_on_bug`)."""
        self.background.spawn(fail_on_bug(self, coro, call_id), call_id)

    def session(self, call: Call) -> CallSession:
        """The running call, set up on first use (a join, or a pre-call network check)."""
        return self.registry.session(call)

    # ---------------------------------------------------------------- presence

    async def load(self, call_id: str) -> Call | None:
        """The call, from memory or, booked by an earlier run or another node, from the
        repository. Only calls nobody is in yet come back; finished ones stay history."""
        return await self.registry.load(call_id)

    async def find(self, claims: JoinClaims) -> tuple[Call, Participant]:
        await self.place(claims.call_id)
        await self.load(claims.call_id)
        return self.lookup(claims)

    async def place(self, call_id: str) -> None:
        """Raises `CallElsewhere` when another node runs the call."""
        await place(self, call_id)

    def lookup(self, claims: JoinClaims) -> tuple[Call, Participant]:
        return self.registry.lookup(claims)

    async def attach(self, conn: Connection, claims: JoinClaims) -> Call:
        """A connection authenticated for a call: it can now be rung and told of its end."""
        call, participant = await self.find(claims)
        self.presence.attach(call.id, participant.id, conn)
        return call

    async def detach(self, conn: Connection, claims: JoinClaims) -> None:
        self.presence.detach(claims.call_id, claims.subject, conn)
        await self.referrals.caller_left(claims.call_id, claims.subject)

    def tell(self, call_id: str, pid: str, text: str) -> None:
        session = self.sessions.get(call_id)
        m = session.members.get(pid) if session else None
        conn = (m.conn if m else None) or self.presence.get(call_id, pid)
        if conn is not None:
            conn.send(text)

    async def kick(self, call_id: str, pid: str) -> None:
        """The MIS removes a participant; they cannot come back with their token."""
        await self.teardown.kick(call_id, pid)

    # ---------------------------------------------------------------- requests

    def ring(self, claims: JoinClaims, target: str) -> dict[str, Any]:
        return self.referrals.ring(claims, target)

    def accept(self, claims: JoinClaims) -> None:
        self.referrals.accept(claims)

    async def decline(self, claims: JoinClaims) -> None:
        await self.referrals.decline(claims)

    async def cancel(self, claims: JoinClaims) -> None:
        await self.referrals.cancel(claims)

    async def join(self, conn: Connection, claims: JoinClaims, *,
                   resume: bool = False) -> dict[str, Any]:
        call, participant = await self.find(claims)
        acting(self, call.id)
        if call.kind is CallKind.REFERRAL and participant.role != "doctor" \
                and call.state in (CallState.CREATED, CallState.RINGING):
            raise CallError("answer the ring before joining", code="call.not_accepted")
        joined = await self.session(call).join(conn, participant.id, resume=resume)
        self.presence.attach(call.id, participant.id, conn)
        return joined

    async def precheck_ice_servers(self, claims: JoinClaims) -> list[dict[str, Any]]:
        """This participant's TURN credentials before `join`, for the page's network check.
        The lease is the one `join` renews, so the call's end returns it either way."""
        try:
            call, participant = await self.find(claims)
        except CallElsewhere as elsewhere:
            return await precheck_elsewhere(self, elsewhere.node, claims)
        return ice_servers_for(await self.session(call).lease_turn(participant.id))

    def _member_session(self, conn: Connection, call_id: str, pid: str) -> CallSession:
        acting(self, call_id)
        session = self.sessions.get(call_id)
        if session is None:
            raise CallError("not in that call", code="call.not_found")
        session.check_member(conn, pid)
        return session

    async def publish(self, conn: Connection, call_id: str, pid: str, sdp: str) -> str:
        return await self._member_session(conn, call_id, pid).publish(conn, pid, sdp)

    async def subscribe(self, conn: Connection, call_id: str, pid: str, source: str,
                        sdp: str) -> str:
        session = self._member_session(conn, call_id, pid)
        return await session.subscribe(conn, pid, source, sdp)

    async def candidate(self, conn: Connection, call_id: str, pid: str, target: str,
                        candidate: dict[str, Any]) -> None:
        await self._member_session(conn, call_id, pid).candidate(conn, pid, target, candidate)

    def client_event(self, conn: Connection, call_id: str, pid: str, event: str,
                     data: dict[str, Any]) -> None:
        self.registry.client_event(conn, call_id, pid, event, data)

    async def disconnected(self, conn: Connection, call_id: str, pid: str) -> None:
        if self.suspended:
            return  # the sockets close because the service stops; the calls go on
        if in_doubt(self, call_id, lambda: self.disconnected(conn, call_id, pid)):
            return
        if (session := self.sessions.get(call_id)) is not None:
            await session.disconnected(conn, pid, self.rejoin_grace)

    async def leave(self, conn: Connection, call_id: str, pid: str, why: str = "left") -> None:
        acting(self, call_id)
        if (session := self.sessions.get(call_id)) is not None:
            await session.leave(conn, pid, why)

    # ---------------------------------------------------------------- teardown

    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None:
        """Ends (or fails, with a reason) a call: the one path every exit takes."""
        await self.teardown.end(call_id, reason, detail)

    def end_soon(self, call_id: str, reason: FailureReason | None = None,
                 detail: str = "") -> None:
        """`end` for a timer callback: everyone is told now, in this very callback (a
        watchdog failing 200 calls at once tells each on time), the release follows."""
        self.teardown.end_soon(call_id, reason, detail)

    async def suspend(self) -> None:
        """A clean stop that leaves every call to the next start (takeover): whoever is
        connected is told `serviceRestarting` and their socket closed at once; media,
        recorders and TURN leases are left running, and no call ends."""
        await self.teardown.suspend()

    async def shutdown(self) -> None:
        """Fails every call someone is connected to (joined, rung or waiting to be rung)."""
        await self.teardown.shutdown()


HUB = web.AppKey("hub", Hub)
