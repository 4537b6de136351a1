"""`Hub`: the calls this node serves, who is connected to them, and the one teardown path
every exit takes.

A router over a registry of `CallSession`s (one per running call, which owns its media,
watchdog and participants), referral ringing and presence. The call logic itself lives in
`signaling.call_session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from kurento_ctl.pool import KurentoPool
from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.call_session import CallServices, CallSession
from signaling.candidates import CandidateFilter, CandidatePolicy
from signaling.errors import CallElsewhere, CallError
from signaling.events import CallEvent
from signaling.media import CallMedia
from signaling.media_events import media_listener
from signaling.participant import Participant
from signaling.participant_session import Connection
from signaling.presence import Presence
from signaling.protocol import encode
from signaling.ringing import Referrals
from signaling.tokens import JoinClaims
from turn.lease import TurnLease, ice_servers_for
from turn.pool import TurnPool

__all__ = ["HUB", "Connection", "Hub"]

log = logging.getLogger(__name__)

CallHook = Callable[[CallEvent, Call, dict[str, Any]], Awaitable[None] | None]


class CallRepository(Protocol):
    """Where calls are kept beyond this process (the history in Redis)."""

    async def get(self, call_id: str) -> dict[str, Any] | None: ...


class Placement(Protocol):
    """Which node runs a call (several nodes on one Redis): `place` claims it for this
    node when no living node has it, adopting it if it had begun elsewhere, and returns
    the node that runs it."""

    async def place(self, call_id: str) -> str: ...

    def epoch(self, call_id: str) -> int | None:
        """The fencing epoch under which this node holds the call."""

    async def forward(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Runs `op` ("end", "kick") on the node that runs the call; its answer."""


class Hub:
    def __init__(self, *, pool: KurentoPool, recordings_root: Path, watchdog_timeout: float,
                 candidate_policy: CandidatePolicy | None = None,
                 turn: TurnPool | None = None, max_conference_size: int = 8,
                 ring_timeout: float = 30.0, rejoin_grace: float = 20.0,
                 media_loss_report: float = 5.0, min_free_bytes: int = 0,
                 free_bytes: Callable[[Path], int] | None = None,
                 finished_linger: float = 300.0,
                 media_factory: Callable[[Call, Path, Any], CallMedia] | None = None,
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
        self._media_factory = media_factory or self._kurento_media
        self.repository = repository
        #: A store that does not answer within this long counts as unreachable (s).
        self.store_timeout = 5.0
        #: Stopping, its calls left to the next start: sockets closing change nothing.
        self.suspended = False
        #: Whether a stop leaves the calls to the next start (with `calls.take_over`); a
        #: full stop (Ctrl-C, the media server going too) ends them instead.
        self.keep_calls_on_stop = True
        self._evictions: dict[str, asyncio.TimerHandle] = {}
        self.calls: dict[str, Call] = {}
        self.sessions: dict[str, CallSession] = {}
        self.presence = Presence()
        self.referrals = Referrals(self, timeout=ring_timeout)
        self.hooks: list[CallHook] = []
        #: Several nodes: where each call runs. None: every call runs here.
        self.placement: Placement | None = None
        #: Whether this node may still act on a call (end it, release its media): false
        #: while its ownership is in doubt (its lease lapsed), so a node that froze and
        #: woke up never undoes what the node that adopted its calls does.
        self.may_act: Callable[[str], bool] = lambda call_id: True
        #: Run by `suspend` once every call is frozen, before the sockets are closed
        #: (several nodes: hand the calls to the others before the pages come back).
        self.on_suspend: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        pool.on_pipelines_lost(self._pipelines_lost)
        if turn is not None:
            turn.on_renewed.append(self._lease_renewed)

    # ---------------------------------------------------------------- calls

    def create_call(self, kind: CallKind, participants: list[tuple[str, str, str]],
                    metadata: dict[str, Any] | None = None,
                    schedule: dict[str, float] | None = None) -> Call:
        self.recordings_root.mkdir(parents=True, exist_ok=True)
        free = self.free_bytes(self.recordings_root)
        if free < self.min_free_bytes:
            # A call that cannot be recorded must not happen at all.
            log.error("! refusing a call: %d bytes free for recordings, %d required", free,
                      self.min_free_bytes)
            raise CallError("the recordings volume is full; calls are refused until space "
                            "is freed", code="recording.disk_full")
        size = self.max_conference_size if kind is CallKind.CONFERENCE else 2
        if len(participants) > size:
            raise CallError(f"a {kind.value} takes at most {size} participants",
                            code="call.full")
        call = Call(kind=kind, max_participants=size, metadata=metadata or {},
                    schedule=schedule)
        for pid, name, role in participants:
            call.add_participant(pid, name, role)
        self.calls[call.id] = call
        self.emit(CallEvent.CREATED, call, {})
        return call

    def emit(self, event: CallEvent, call: Call, data: dict[str, Any]) -> None:
        """Tells every hook; a failing hook is logged and the others still hear it."""
        for hook in list(self.hooks):
            try:
                result = hook(event, call, data)
                if asyncio.iscoroutine(result):
                    self.spawn(result, call.id)
            except Exception:
                log.exception("! hook failed for %s", event, extra={"call_id": call.id})

    def spawn(self, coro: Awaitable[Any], call_id: str) -> None:
        """A background task whose failure is logged with its call's id, never lost."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("! background task failed: %r", exc, exc_info=exc,
                          extra={"call_id": call_id})

        task.add_done_callback(done)

    def _kurento_media(self, call: Call, folder: Path, listener: Any) -> CallMedia:
        return CallMedia(call.id, self.pool, folder, listener,
                         CandidateFilter(self.candidate_policy))

    def session(self, call: Call) -> CallSession:
        """The running call, set up on first use (a join, or a pre-call network check)."""
        session = self.sessions.get(call.id)
        if session is None:
            folder = self.recordings_root / time.strftime("%Y/%m/%d") / call.id
            holder: list[CallSession] = []
            media = self._media_factory(call, folder, media_listener(
                lambda event: holder[0].on_media(event),
                lambda pid, text: holder[0].send(pid, text)))
            session = CallSession(call, media, CallServices(
                turn=self.turn, watchdog_timeout=self.watchdog_timeout,
                rejoin_grace=self.rejoin_grace, media_loss_report=self.media_loss_report,
                emit=self.emit, spawn=self.spawn, end=self.end, end_soon=self.end_soon,
                revoke=self._revoke))
            holder.append(session)
            self.sessions[call.id] = session
            call.node = self.node_id
            if self.placement is not None:
                call.epoch = self.placement.epoch(call.id)
        return session

    def _lease_renewed(self, fresh: TurnLease) -> None:
        session = self.sessions.get(fresh.call_id)
        if session is not None:
            session.lease_renewed(fresh)

    async def _revoke(self, lease: TurnLease, release: bool = True) -> None:
        """Returns a lease (or only revokes replaced credentials); never raises."""
        if self.turn is None:
            return
        try:
            if release:
                await self.turn.release(lease)
            else:
                await self.turn.provider.revoke(lease)
        except Exception:
            log.exception("! returning TURN lease %s failed; it expires on its own",
                          lease.key, extra={"call_id": lease.call_id})

    # ---------------------------------------------------------------- presence

    async def load(self, call_id: str) -> Call | None:
        """The call, from memory or, booked by an earlier run or another node, from the
        repository. Only calls nobody is in yet come back; finished ones stay history."""
        call = self.calls.get(call_id)
        if call is not None or self.repository is None:
            return call
        try:
            async with asyncio.timeout(self.store_timeout):
                snap = await self.repository.get(call_id)
        except Exception as exc:
            log.error("! cannot read call %s from the store: %s", call_id, type(exc).__name__)
            raise CallError("the call store cannot be reached; retry shortly",
                            code="service.unavailable") from None
        if snap is None or snap.get("state") not in (CallState.CREATED, CallState.RINGING):
            return None
        # Another request may have loaded it while this one awaited the store.
        call = self.calls.get(call_id)
        if call is None:
            call = self.calls[call_id] = Call.from_snapshot(snap)
            log.info("= booked call restored from the store", extra={"call_id": call_id})
        return call

    async def find(self, claims: JoinClaims) -> tuple[Call, Participant]:
        await self.place(claims.call_id)
        await self.load(claims.call_id)
        return self.lookup(claims)

    async def place(self, call_id: str) -> None:
        """Raises `CallElsewhere` when another node runs the call."""
        if self.placement is None:
            return
        try:
            async with asyncio.timeout(self.store_timeout):
                node = await self.placement.place(call_id)
        except CallElsewhere:
            raise
        except Exception as exc:
            log.error("! cannot tell which node runs call %s: %s", call_id,
                      type(exc).__name__)
            raise CallError("the call store cannot be reached; retry shortly",
                            code="service.unavailable") from None
        if node != self.node_id:
            # A copy from before another node took it (booked here, say) is stale now.
            if (call := self.calls.get(call_id)) is not None and not call.finished:
                self.calls.pop(call_id, None)
            raise CallElsewhere(node)

    async def forward(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """An API operation on a call another node runs, run there."""
        if self.placement is None:
            raise CallError("no such call", code="call.not_found")
        return await self.placement.forward(node, op, args)

    def abandon(self, call_id: str) -> None:
        """Another node owns the call now (this one froze past its lease): whoever is
        still connected here is sent away to reconnect, nothing is released or told."""
        session = self.sessions.pop(call_id, None)
        self.calls.pop(call_id, None)
        audience = dict(self.presence.pop_call(call_id))
        if session is not None:
            session.freeze()
            audience.update(session.connected())
        self.referrals.ringing.stop(call_id)
        message = encode("serviceRestarting")
        for conn in audience.values():
            conn.send(message)
            conn.close_soon()
        log.warning("! call given up: another node owns it now", extra={"call_id": call_id})

    def lookup(self, claims: JoinClaims) -> tuple[Call, Participant]:
        call = self.calls.get(claims.call_id)
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
        call = self.calls.get(call_id)
        if call is None:
            raise CallError("no such call", code="call.not_found")
        if call.finished:
            raise CallError("the call is over", code="call.ended")
        if pid not in call.participants:
            raise CallError("no such participant", code="participant.not_found")
        call.participants[pid].extra["removed"] = True
        self.presence.drop(call_id, pid)
        session = self.sessions.get(call_id)
        m = session.members.get(pid) if session else None
        if session is None or m is None:
            return
        if m.conn is not None:
            m.conn.send(encode("removed"))
            await session.leave(m.conn, pid, why="removed")
        elif m.reconnecting:
            await session.gone(pid, "removed")

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
        self._acting(call.id)
        if call.kind is CallKind.REFERRAL and participant.role != "doctor" \
                and call.state in (CallState.CREATED, CallState.RINGING):
            raise CallError("answer the ring before joining", code="call.not_accepted")
        joined = await self.session(call).join(conn, participant.id, resume=resume)
        self.presence.attach(call.id, participant.id, conn)
        return joined

    async def precheck_ice_servers(self, claims: JoinClaims) -> list[dict[str, Any]]:
        """This participant's TURN credentials before `join`, for the page's network check.
        The lease is the one `join` renews, so the call's end returns it either way."""
        call, participant = await self.find(claims)
        return ice_servers_for(await self.session(call).lease_turn(participant.id))

    def _acting(self, call_id: str) -> None:
        if not self.may_act(call_id):
            raise CallError("this node is confirming that it still runs the call; retry "
                            "shortly", code="service.unavailable")

    def _member_session(self, conn: Connection, call_id: str, pid: str) -> CallSession:
        self._acting(call_id)
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
        session = self.sessions.get(call_id)
        m = session.members.get(pid) if session else None
        if session is not None and m is not None and m.conn is conn and not session.closing:
            session.client_event(pid, event, data)
            return
        # Not in the call (yet): the pre-call page's diagnostics still land on the timeline
        # of the call this connection said hello to; nothing else counts.
        call = self.calls.get(call_id)
        if call is None or call.finished or self.presence.get(call_id, pid) is not conn:
            raise CallError("not in that call", code="call.not_found")
        kept = {k: data[k] for k in list(data)[:16]}
        call.timeline.add(f"client.{event}"[:64], participant=pid, data=kept, joined=False)

    async def disconnected(self, conn: Connection, call_id: str, pid: str) -> None:
        if self.suspended:
            return  # the sockets close because the service stops; the calls go on
        if not self.may_act(call_id):
            # Woken from a freeze, say: the media this would drop may be another node's
            # now. Looked at again once this node knows.
            asyncio.get_running_loop().call_later(
                1.0, lambda: self.spawn(self.disconnected(conn, call_id, pid), call_id))
            return
        if (session := self.sessions.get(call_id)) is not None:
            await session.disconnected(conn, pid, self.rejoin_grace)

    async def leave(self, conn: Connection, call_id: str, pid: str, why: str = "left") -> None:
        self._acting(call_id)
        if (session := self.sessions.get(call_id)) is not None:
            await session.leave(conn, pid, why)

    def _pipelines_lost(self, url: str, pipeline_ids: set[str]) -> None:
        for session in list(self.sessions.values()):
            if session.media.pipeline_id in pipeline_ids:
                self.spawn(self.end(session.call.id, FailureReason.MEDIA_SERVER_LOST,
                                    f"media server {url} lost"), session.call.id)

    # ---------------------------------------------------------------- teardown

    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None:
        """Ends (or fails, with a reason) a call: the one path every exit takes."""
        announced = self._announce_end(call_id, reason, detail)
        if announced is not None:
            await self._release(announced, reason, detail)

    def end_soon(self, call_id: str, reason: FailureReason | None = None,
                 detail: str = "") -> None:
        """`end` for a timer callback: everyone is told now, in this very callback (a
        watchdog failing 200 calls at once tells each on time), the release follows."""
        announced = self._announce_end(call_id, reason, detail)
        if announced is not None:
            self.spawn(self._release(announced, reason, detail), call_id)

    def _announce_end(self, call_id: str, reason: FailureReason | None, detail: str
                      ) -> tuple[Call, CallSession | None] | None:
        """The synchronous first step of `end`: the call is over and everyone connected
        hears it. None if it was over already (or is being ended)."""
        call = self.calls.get(call_id)
        if call is None or call.finished:
            return None
        if not self.may_act(call_id):
            # Asked again shortly: by then this node knows whether the call is still its.
            log.warning("! not ending the call yet: this node's ownership is unconfirmed",
                        extra={"call_id": call_id})
            asyncio.get_running_loop().call_later(
                1.0, lambda: self.end_soon(call_id, reason, detail))
            return None
        session = self.sessions.get(call_id)
        if session is not None:
            if session.closing:
                return None
            session.begin_close()
        self.referrals.ringing.stop(call_id)
        try:
            call.finish(reason, detail)
            message = encode("callEnded") if reason is None else encode(
                "callFailed", reason=reason.value, detail=detail)
            # Everyone connected hears it, joined or only online (a consultant being rung).
            audience = {**self.presence.pop_call(call_id),
                        **(session.connected() if session else {})}
            for conn in audience.values():
                conn.send(message)
        except Exception:
            # Whatever went wrong telling them, what the call holds is still released.
            log.exception("! ending the call failed; releasing it anyway",
                          extra={"call_id": call_id})
        return call, session

    async def _release(self, announced: tuple[Call, CallSession | None],
                       reason: FailureReason | None, detail: str) -> None:
        call, session = announced
        try:
            if session is not None:
                try:
                    await session.close(server_lost=reason is FailureReason.MEDIA_SERVER_LOST)
                finally:
                    self.sessions.pop(call.id, None)
        finally:
            data = {"recordings": [str(p) for p in session.media.recordings]} if session else {}
            if reason is None:
                self.emit(CallEvent.ENDED, call, data)
            else:
                self.emit(CallEvent.FAILED, call, {"reason": reason.value, "detail": detail,
                                                   **data})
            self._evictions[call.id] = asyncio.get_running_loop().call_later(
                self.finished_linger, self._evict, call.id)

    def _evict(self, call_id: str) -> None:
        self._evictions.pop(call_id, None)
        self.calls.pop(call_id, None)
        self.presence.pop_call(call_id)

    async def suspend(self) -> None:
        """A clean stop that leaves every call to the next start (takeover): whoever is
        connected is told `serviceRestarting` and their socket closed at once; media,
        recorders and TURN leases are left running, and no call ends."""
        self.suspended = True
        message = encode("serviceRestarting")
        audience: list[Connection] = []
        for session in self.sessions.values():
            session.freeze()
            audience += session.connected().values()
        for step in self.on_suspend:
            try:
                await step()
            except Exception:
                log.exception("! a step of the clean stop failed")
        for call_id in list(self.presence.calls()):
            audience += self.presence.pop_call(call_id).values()
        for conn in {id(c): c for c in audience}.values():
            conn.send(message)
            conn.close_soon()
        for call_id in list(self.referrals.ringing.rings):
            self.referrals.ringing.stop(call_id)  # a ring does not outlive its socket
        for handle in self._evictions.values():
            handle.cancel()
        self._evictions.clear()
        if running := sum(not s.call.finished for s in self.sessions.values()):
            log.warning("! stopping with %d calls left running for the next start", running)

    async def shutdown(self) -> None:
        """Fails every call someone is connected to (joined, rung or waiting to be rung)."""
        await asyncio.gather(*(self.end(cid, FailureReason.SHUTDOWN, "the service is stopping")
                               for cid in {*self.sessions, *self.referrals.ringing.rings,
                                           *self.presence.calls()}))
        for task in list(self._tasks):
            # A failure was already logged with its call id by `spawn`.
            with contextlib.suppress(Exception):
                await task
        for handle in self._evictions.values():
            handle.cancel()
        self._evictions.clear()


HUB = web.AppKey("hub", Hub)
