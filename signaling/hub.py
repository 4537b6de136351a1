"""`Hub`: calls, who is connected to them, and the one teardown path every exit takes.

The hub turns protocol requests into `CallMedia` work, arms the media watchdog as offers
are answered, declares a call live once media flows every way and every recorder records,
and ends or fails calls: hang-up, leave, watchdog, media-server loss, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from redis.exceptions import RedisError

from kurento_ctl.errors import KurentoError
from kurento_ctl.pool import KurentoPool, NoMediaServer
from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.candidates import CandidateFilter, CandidatePolicy
from signaling.errors import CallError, MediaError
from signaling.media import CallMedia, MediaListener
from signaling.participant import Participant, ParticipantState
from signaling.protocol import encode
from signaling.sdp import offer_kinds
from signaling.tokens import JoinClaims
from signaling.watchdog import Expectation, Expired, MediaWatchdog, WatchdogTimer
from turn.lease import TurnExhausted, TurnLease, ice_servers_for, kurento_turn_url
from turn.pool import TurnPool

__all__ = ["HUB", "Connection", "Hub"]

log = logging.getLogger(__name__)

CallHook = Callable[[str, Call, dict[str, Any]], Awaitable[None] | None]


class Connection(Protocol):
    def send(self, text: str) -> None: ...


@dataclass
class Ringing:
    caller: str
    callee: str
    timer: asyncio.TimerHandle


@dataclass
class CallRuntime:
    call: Call
    media: CallMedia
    watchdog: MediaWatchdog
    timer: WatchdogTimer
    connections: dict[str, Connection] = field(default_factory=dict)
    recording: set[str] = field(default_factory=set)
    closing: bool = False
    #: Participants whose connection dropped, with the timer that ends their grace period.
    reconnecting: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    leases: dict[str, TurnLease] = field(default_factory=dict)
    #: (viewer, source) pairs whose browser reported media arriving.
    reported: set[tuple[str, str]] = field(default_factory=set)
    #: Media flows that stopped mid-call: the pending report, or None once reported.
    interrupted: dict[tuple[str, str, str], asyncio.TimerHandle | None] = field(
        default_factory=dict)


class Hub:
    def __init__(self, *, pool: KurentoPool, recordings_root: Path, watchdog_timeout: float,
                 candidate_policy: CandidatePolicy | None = None,
                 turn: TurnPool | None = None, max_conference_size: int = 8,
                 ring_timeout: float = 30.0, rejoin_grace: float = 20.0,
                 media_loss_report: float = 5.0, min_free_bytes: int = 0,
                 free_bytes: Callable[[Path], int] | None = None,
                 finished_linger: float = 300.0) -> None:
        self.pool = pool
        self.recordings_root = recordings_root
        self.watchdog_timeout = watchdog_timeout
        self.candidate_policy = candidate_policy or CandidatePolicy()
        self.turn = turn
        self.min_free_bytes = min_free_bytes
        self.free_bytes = free_bytes or (lambda path: shutil.disk_usage(path).free)
        self.max_conference_size = max_conference_size
        self.ring_timeout = ring_timeout
        self.rejoin_grace = rejoin_grace
        self.media_loss_report = media_loss_report
        #: A finished call stays in memory this long (s), so late requests for it get
        #: `call.ended`; after that only the history (CallStore) knows it.
        self.finished_linger = finished_linger
        self._evictions: dict[str, asyncio.TimerHandle] = {}
        self.calls: dict[str, Call] = {}
        #: Connections that said `hello`, joined or not: a consultant waiting to be rung.
        self.online: dict[str, dict[str, Connection]] = {}
        self.rings: dict[str, Ringing] = {}
        self.runtime: dict[str, CallRuntime] = {}
        self.hooks: list[CallHook] = []
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
        self._emit("call.created", call, {})
        return call

    def _emit(self, event: str, call: Call, data: dict[str, Any]) -> None:
        for hook in list(self.hooks):
            try:
                result = hook(event, call, data)
                if asyncio.iscoroutine(result):
                    self._spawn(result)
            except Exception:
                log.exception("! hook failed for %s", event, extra={"call_id": call.id})

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _runtime(self, call: Call) -> CallRuntime:
        rt = self.runtime.get(call.id)
        if rt is None:
            listener = MediaListener(
                candidate=lambda owner, target, cand: self._send(
                    call.id, owner, encode("candidate", target=target, **cand)),
                flow=lambda owner, target, d, kind, on: self._on_flow(call, owner, target, d,
                                                                      kind, on),
                recording=lambda pid: self._on_recording(call, pid),
                failure=lambda pid, what: self._on_media_failure(call, pid, what),
                ice_state=lambda pid, target, state: call.timeline.add(
                    "ice", participant=pid, target=target, state=state),
                dropped=lambda pid, direction, reasons: self._on_dropped(call, pid, direction,
                                                                         reasons),
                pair=lambda pid, target, kind: call.timeline.add(
                    "ice-pair", participant=pid, target=target, remote=kind),
            )
            folder = self.recordings_root / time.strftime("%Y/%m/%d") / call.id
            media = CallMedia(call.id, self.pool, folder, listener,
                              CandidateFilter(self.candidate_policy))
            watchdog = MediaWatchdog(self.watchdog_timeout)
            timer = WatchdogTimer(watchdog, lambda expired: self._on_watchdog(call, expired),
                                  detail=lambda e: self._ice_detail(call, e))
            rt = self.runtime[call.id] = CallRuntime(call, media, watchdog, timer)
        return rt

    def _send(self, call_id: str, participant: str, text: str) -> None:
        rt = self.runtime.get(call_id)
        conn = rt.connections.get(participant) if rt else None
        if conn is not None:
            conn.send(text)

    def _broadcast(self, rt: CallRuntime, text: str, *, but: str | None = None) -> None:
        for pid, conn in list(rt.connections.items()):
            if pid != but:
                conn.send(text)

    # ---------------------------------------------------------------- requests

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
        self.online.get(call_id, {}).pop(pid, None)
        rt = self.runtime.get(call_id)
        if rt is None:
            return
        conn = rt.connections.get(pid)
        if conn is not None:
            conn.send(encode("removed"))
            await self.leave(conn, call_id, pid, why="removed")
        elif (timer := rt.reconnecting.pop(pid, None)) is not None:
            timer.cancel()
            await self._gone(rt, pid, "removed")

    def attach(self, conn: Connection, claims: JoinClaims) -> Call:
        """A connection authenticated for a call: it can now be rung and told of its end."""
        call, participant = self.lookup(claims)
        self.online.setdefault(call.id, {})[participant.id] = conn
        return call

    async def detach(self, conn: Connection, claims: JoinClaims) -> None:
        online = self.online.get(claims.call_id, {})
        if online.get(claims.subject) is conn:
            del online[claims.subject]
        if not online:
            self.online.pop(claims.call_id, None)
        ring = self.rings.get(claims.call_id)
        if ring is not None and claims.subject == ring.caller:
            # Nobody is left to talk to whoever picks up.
            await self._stop_ringing(claims.call_id, "ringCancelled", None, "caller left")

    def _tell(self, call_id: str, pid: str, text: str) -> None:
        rt = self.runtime.get(call_id)
        conn = (rt.connections.get(pid) if rt else None) or self.online.get(call_id, {}).get(pid)
        if conn is not None:
            conn.send(text)

    # ---------------------------------------------------------------- referral ringing

    def ring(self, claims: JoinClaims, target: str) -> dict[str, Any]:
        call, caller = self.lookup(claims)
        if call.kind is not CallKind.REFERRAL:
            raise CallError("only a referral rings", code="call.not_referral")
        if caller.role != "doctor":
            raise CallError("only the referring doctor rings", code="call.not_allowed")
        callee = call.participants.get(target)
        if callee is None or callee.id == caller.id:
            raise CallError("no such participant to ring", code="participant.not_found")
        if call.state is not CallState.CREATED:
            raise CallError(f"the call is {call.state.value}", code="call.state")
        conn = self.online.get(call.id, {}).get(target)
        if conn is None:
            raise CallError(f"{callee.name} is not online", code="participant.offline")
        call.transition(CallState.RINGING)
        call.timeline.add("ring", participant=caller.id, target=target)
        timer = asyncio.get_running_loop().call_later(
            self.ring_timeout, lambda: self._spawn(self._stop_ringing(
                call.id, "ringTimeout", FailureReason.RING_TIMEOUT,
                f"no answer within {self.ring_timeout:g} s")))
        self.rings[call.id] = Ringing(caller.id, target, timer)
        conn.send(encode("incomingCall", call=call.id, kind=call.kind.value,
                         caller=caller.describe(), timeout=self.ring_timeout))
        return {"participant": target, "timeout": self.ring_timeout}

    def _rung(self, claims: JoinClaims) -> Ringing:
        ring = self.rings.get(claims.call_id)
        if ring is None or ring.callee != claims.subject:
            raise CallError("nothing is ringing for you", code="call.not_ringing")
        return ring

    def accept(self, claims: JoinClaims) -> None:
        call, _ = self.lookup(claims)
        ring = self._rung(claims)
        ring.timer.cancel()
        del self.rings[call.id]
        call.transition(CallState.CONNECTING)
        call.timeline.add("accepted", participant=claims.subject)
        self._tell(call.id, ring.caller, encode("ringAccepted", participant=claims.subject))

    async def decline(self, claims: JoinClaims) -> None:
        self.lookup(claims)
        self._rung(claims)
        await self._stop_ringing(claims.call_id, "ringDeclined", FailureReason.DECLINED,
                                 f"{claims.subject} declined")

    async def cancel(self, claims: JoinClaims) -> None:
        self.lookup(claims)
        ring = self.rings.get(claims.call_id)
        if ring is None or ring.caller != claims.subject:
            raise CallError("you are not ringing anyone", code="call.not_ringing")
        await self._stop_ringing(claims.call_id, "ringCancelled", None, "caller cancelled")

    async def _stop_ringing(self, call_id: str, event: str, reason: FailureReason | None,
                            detail: str) -> None:
        ring = self.rings.pop(call_id, None)
        if ring is None:
            return
        ring.timer.cancel()
        call = self.calls[call_id]
        call.timeline.add(event, participant=ring.callee, detail=detail)
        told = ring.callee if event in ("ringCancelled", "ringTimeout") else ring.caller
        self._tell(call_id, told, encode(event, participant=ring.callee))
        if event == "ringTimeout":
            self._tell(call_id, ring.caller, encode(event, participant=ring.callee))
        await self.end(call_id, reason, detail)

    # ---------------------------------------------------------------- joining

    async def join(self, conn: Connection, claims: JoinClaims) -> dict[str, Any]:
        call, participant = self.lookup(claims)
        ringing = call.state in (CallState.CREATED, CallState.RINGING)
        if call.kind is CallKind.REFERRAL and ringing and participant.role != "doctor":
            raise CallError("answer the ring before joining", code="call.not_accepted")
        rt = self._runtime(call)
        # First, so that an exhausted pool refuses the join before anything changed.
        lease = await self._lease_turn(rt, participant.id)
        if rt.closing or call.finished:
            # The call ended while the lease was being taken: teardown has run without it.
            if lease is not None and rt.leases.get(participant.id) is lease:
                del rt.leases[participant.id]
                await self._revoke(lease)
            raise CallError("the call is over", code="call.ended")
        grace = rt.reconnecting.pop(participant.id, None)
        if grace is not None:
            grace.cancel()
            call.timeline.add("rejoined", participant=participant.id)
        old = rt.connections.get(participant.id)
        if old is not None and old is not conn:
            # The same person on a new device or a new socket: the newest wins.
            await self._drop_media(rt, participant.id)
            old.send(encode("replaced"))
        if participant.state is not ParticipantState.CONNECTING:
            participant.transition(ParticipantState.CONNECTING)
        participant.joins += 1
        participant.published = frozenset()
        rt.connections[participant.id] = conn
        self.online.setdefault(call.id, {})[participant.id] = conn
        if ringing and call.kind is not CallKind.REFERRAL:
            call.transition(CallState.CONNECTING)
        call.timeline.add("joined", participant=participant.id)
        self._broadcast(rt, encode("participantJoined", participant=participant.describe()),
                        but=participant.id)
        self._emit("participant.joined", call, {"participant": participant.id})
        return {
            "call": {"id": call.id, "kind": call.kind.value, "state": call.state.value},
            "you": participant.describe(),
            "participants": [p.describe() for p in call.participants.values()
                             if p.id != participant.id],
            "iceServers": ice_servers_for(lease),
            "recording": True,
            "watchdogTimeout": self.watchdog_timeout,
        }

    async def precheck_ice_servers(self, claims: JoinClaims) -> list[dict[str, Any]]:
        """This participant's TURN credentials before `join`, for the page's network check.

        The lease is the one `join` renews, so the call's end returns it either way.
        """
        call, participant = self.lookup(claims)
        return ice_servers_for(await self._lease_turn(self._runtime(call), participant.id))

    async def _lease_turn(self, rt: CallRuntime, pid: str) -> TurnLease | None:
        if self.turn is None:
            return None
        try:
            lease = await self.turn.lease(rt.call.id, pid)
        except TurnExhausted as exc:
            rt.call.timeline.add("turn-exhausted", participant=pid)
            raise CallError(str(exc), code="turn.exhausted") from None
        except (RedisError, OSError) as exc:
            log.error("! TURN pool unreachable: %s", type(exc).__name__,
                      extra={"call_id": rt.call.id})
            raise CallError("TURN credentials are unavailable", code="turn.exhausted") from None
        old = rt.leases.get(pid)
        if old is not None and old.username != lease.username:
            await self._revoke(old, release=False)
        rt.leases[pid] = lease
        return lease

    def _lease_renewed(self, fresh: TurnLease) -> None:
        """Renewed credentials reach the browser, so a peer connection it opens hours into
        a call (a late subscription, an ICE restart) still gets a relay."""
        rt = self.runtime.get(fresh.call_id)
        if rt is None or rt.closing or fresh.participant not in rt.leases:
            return
        rt.leases[fresh.participant] = fresh
        rt.call.timeline.add("turn-renewed", participant=fresh.participant,
                             expires=int(fresh.expires))
        self._send(fresh.call_id, fresh.participant,
                   encode("iceServers", iceServers=ice_servers_for(fresh)))

    async def _revoke(self, lease: TurnLease, *, release: bool = True) -> None:
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

    @staticmethod
    def _kurento_turn(rt: CallRuntime, pid: str) -> str | None:
        """The participant's lease for its endpoints on the media server, as Kurento takes it."""
        lease = rt.leases.get(pid)
        return kurento_turn_url(lease) if lease is not None else None

    def _member(self, conn: Connection, call_id: str, pid: str) -> CallRuntime:
        rt = self.runtime.get(call_id)
        if rt is None or rt.connections.get(pid) is not conn or rt.closing:
            raise CallError("not in that call", code="call.not_found")
        return rt

    @staticmethod
    def _still_open(rt: CallRuntime) -> None:
        """After a media-server round trip: the call may have ended meanwhile, and arming
        its watchdog then would leave a timer behind the teardown."""
        if rt.closing:
            raise CallError("the call is over", code="call.ended")

    async def publish(self, conn: Connection, call_id: str, pid: str, sdp: str) -> str:
        rt = self._member(conn, call_id, pid)
        kinds = offer_kinds(sdp, "send")
        try:
            answer = await rt.media.publish(pid, sdp, kinds,
                                            turn_url=self._kurento_turn(rt, pid))
        except NoMediaServer:
            raise MediaError("no media server is reachable", code="media.unavailable") from None
        except KurentoError as exc:
            raise MediaError(f"media server error: {exc}", code="media.unavailable") from None
        self._still_open(rt)
        participant = rt.call.participants[pid]
        participant.published = kinds
        rt.call.media_server = rt.media.server.url if rt.media.server else None
        now = rt.timer.now()
        for kind in kinds:
            rt.watchdog.expect(Expectation(pid, "from-browser", kind), now)
        rt.watchdog.expect(Expectation(pid, "recording", "file"), now)
        # Media must also reach each publisher's browser from every other publisher, even
        # if its client never subscribes; someone who has not published yet (a patient on
        # the camera prompt) is not timed until their own negotiation completes.
        for other in rt.call.participants.values():
            if other.id != pid and other.published and other.id in rt.connections:
                rt.watchdog.expect(Expectation(pid, "browser-report", "media", other.id), now)
                rt.watchdog.expect(Expectation(other.id, "browser-report", "media", pid), now)
        rt.timer.rearm()
        self._broadcast(rt, encode("participantPublished", participant=pid,
                                   kinds=sorted(kinds)), but=pid)
        return answer

    async def subscribe(self, conn: Connection, call_id: str, pid: str, source: str,
                        sdp: str) -> str:
        rt = self._member(conn, call_id, pid)
        other = rt.call.participants.get(source)
        if other is None or source == pid:
            raise CallError("no such participant to receive", code="participant.not_found")
        offer_kinds(sdp, "recv")
        try:
            answer = await rt.media.subscribe(pid, source, sdp,
                                              turn_url=self._kurento_turn(rt, pid))
        except KurentoError as exc:
            raise MediaError(f"media server error: {exc}", code="media.unavailable") from None
        self._still_open(rt)
        now = rt.timer.now()
        for kind in other.published:
            rt.watchdog.expect(Expectation(pid, "to-browser", kind, source), now)
        rt.watchdog.expect(Expectation(pid, "browser-report", "media", source), now)
        rt.timer.rearm()
        return answer

    async def candidate(self, conn: Connection, call_id: str, pid: str, target: str,
                        candidate: dict[str, Any]) -> None:
        rt = self._member(conn, call_id, pid)
        await rt.media.add_candidate(pid, target, candidate)

    def client_event(self, conn: Connection, call_id: str, pid: str, event: str,
                     data: dict[str, Any]) -> None:
        kept = {k: data[k] for k in list(data)[:16]}
        rt = self.runtime.get(call_id)
        if rt is None or rt.connections.get(pid) is not conn or rt.closing:
            # Not in the call (yet): the pre-call page's diagnostics still land on the
            # timeline of the call this connection said hello to; nothing else counts.
            call = self.calls.get(call_id)
            if call is None or call.finished or self.online.get(call_id, {}).get(pid) is not conn:
                raise CallError("not in that call", code="call.not_found")
            call.timeline.add(f"client.{event}"[:64], participant=pid, data=kept, joined=False)
            return
        rt.call.timeline.add(f"client.{event}"[:64], participant=pid, data=kept)
        if event == "mediaReceived" and isinstance(data.get("participant"), str):
            rt.reported.add((pid, data["participant"]))
            self._satisfy(rt, Expectation(pid, "browser-report", "media", data["participant"]))

    async def disconnected(self, conn: Connection, call_id: str, pid: str) -> None:
        """The socket dropped without a `leave`: hold the place for the rejoin grace."""
        rt = self.runtime.get(call_id)
        if rt is None or rt.connections.get(pid) is not conn:
            return
        if self.rejoin_grace <= 0 or rt.closing:
            await self.leave(conn, call_id, pid, why="disconnected")
            return
        del rt.connections[pid]
        participant = rt.call.participants[pid]
        participant.transition(ParticipantState.RECONNECTING)
        rt.call.timeline.add("disconnected", participant=pid, grace=self.rejoin_grace)
        log.info("= %s disconnected; may rejoin for %g s", pid, self.rejoin_grace,
                 extra={"call_id": call_id})
        rt.reconnecting[pid] = asyncio.get_running_loop().call_later(
            self.rejoin_grace, lambda: self._spawn(self._grace_over(call_id, pid)))
        self._broadcast(rt, encode("participantReconnecting", participant=pid,
                                   grace=self.rejoin_grace))
        await self._drop_media(rt, pid)

    async def _grace_over(self, call_id: str, pid: str) -> None:
        rt = self.runtime.get(call_id)
        if rt is None or rt.reconnecting.pop(pid, None) is None:
            return
        await self._gone(rt, pid, "disconnected")

    async def leave(self, conn: Connection, call_id: str, pid: str, why: str = "left") -> None:
        rt = self.runtime.get(call_id)
        if rt is None or rt.connections.get(pid) is not conn:
            return
        del rt.connections[pid]
        await self._gone(rt, pid, why)

    async def _gone(self, rt: CallRuntime, pid: str, why: str) -> None:
        # State first, before any await: a teardown running meanwhile sees them gone.
        participant = rt.call.participants[pid]
        if participant.state is not ParticipantState.LEFT:
            participant.transition(ParticipantState.LEFT)
        rt.call.timeline.add("left", participant=pid, why=why)
        self._emit("participant.left", rt.call, {"participant": pid, "why": why})
        if rt.closing:
            return  # `end` returns the lease with the others'
        if (lease := rt.leases.pop(pid, None)) is not None:
            await self._revoke(lease)
        self._broadcast(rt, encode("participantLeft", participant=pid))
        if not rt.connections and not rt.reconnecting:
            await self.end(rt.call.id)
            return
        await self._drop_media(rt, pid)
        self._check_live(rt)

    async def _drop_media(self, rt: CallRuntime, pid: str) -> None:
        rt.reported = {pair for pair in rt.reported if pid not in pair}
        for key in [k for k in rt.interrupted if pid in (k[0], k[1])]:
            timer = rt.interrupted.pop(key)
            if timer is not None:
                timer.cancel()
        rt.watchdog.forget(pid)
        rt.timer.rearm()
        rt.recording.discard(pid)
        await rt.media.remove(pid)

    # ---------------------------------------------------------------- media events

    def _satisfy(self, rt: CallRuntime, expectation: Expectation) -> None:
        if rt.closing:
            return  # teardown cancelled the watchdog; re-arming it would outlive the call
        if rt.watchdog.satisfy(expectation):
            rt.timer.rearm()
            rt.call.timeline.add("media", participant=expectation.participant,
                                 proven=expectation.direction, kind=expectation.kind,
                                 source=expectation.source)
        self._check_live(rt)

    def _on_flow(self, call: Call, owner: str, target: str, direction: str, kind: str,
                 flowing: bool) -> None:
        rt = self.runtime.get(call.id)
        if rt is None:
            return
        call.timeline.add("flow", participant=owner, target=target, direction=direction,
                          kind=kind, flowing=flowing)
        if rt.closing:
            return  # events of a pipeline being torn down: on the timeline, nothing more
        key = (owner, target, kind)
        if not flowing:
            if call.state is CallState.LIVE and key not in rt.interrupted:
                rt.interrupted[key] = asyncio.get_running_loop().call_later(
                    self.media_loss_report, self._report_loss, call.id, key)
            return
        if key in rt.interrupted:
            timer = rt.interrupted.pop(key)
            if timer is not None:
                timer.cancel()
            else:
                self._media_loss_changed(rt, key, "mediaRestored", "call.media_restored")
        if target == "publish" and direction == "out":
            self._satisfy(rt, Expectation(owner, "from-browser", kind))
            self._send(call.id, owner, encode("mediaFlowing", direction="sending", kind=kind))
        elif target != "publish" and direction == "in":
            self._satisfy(rt, Expectation(owner, "to-browser", kind, target))

    def _report_loss(self, call_id: str, key: tuple[str, str, str]) -> None:
        rt = self.runtime.get(call_id)
        if rt is None or key not in rt.interrupted or rt.closing:
            return
        rt.interrupted[key] = None
        self._media_loss_changed(rt, key, "mediaInterrupted", "call.media_interrupted")

    def _media_loss_changed(self, rt: CallRuntime, key: tuple[str, str, str], event: str,
                            hook: str) -> None:
        """Media that stopped (or came back) mid-call: told to everyone, the call goes on."""
        owner, target, kind = key
        # A publisher's endpoint stops receiving from its browser; a subscriber's endpoint
        # stops sending to its browser: either way name whose media and who misses it.
        source = owner if target == "publish" else target
        fields: dict[str, Any] = {"participant": source, "kind": kind,
                  **({} if target == "publish" else {"viewer": owner})}
        rt.call.timeline.add(event, **fields)
        log.warning("! %s %s", event, fields, extra={"call_id": rt.call.id})
        self._broadcast(rt, encode(event, **fields))
        self._emit(hook, rt.call, fields)

    def _on_recording(self, call: Call, pid: str) -> None:
        rt = self.runtime.get(call.id)
        if rt is None or rt.closing:
            return
        rt.recording.add(pid)
        call.timeline.add("recording", participant=pid)
        self._send(call.id, pid, encode("recording", state="on"))
        self._satisfy(rt, Expectation(pid, "recording", "file"))

    def _on_dropped(self, call: Call, pid: str, direction: str, reasons: list[str]) -> None:
        call.timeline.add("candidates-dropped", participant=pid, direction=direction,
                          reasons=reasons)
        log.info("= dropped %d %s candidates of %s: %s", len(reasons), direction, pid,
                 ",".join(sorted(set(reasons))), extra={"call_id": call.id})

    def _on_media_failure(self, call: Call, pid: str, what: str) -> None:
        call.timeline.add("media-error", participant=pid, error=what)
        if what.startswith("recorder:"):
            # The media server's description names the file on the server: it stays on
            # the timeline and in the log, and the participants read only what happened.
            log.error("! %s's recorder: %s", pid, what, extra={"call_id": call.id})
            self._spawn(self.end(call.id, FailureReason.RECORDING_FAILED,
                                 f"the recording of {pid} could not be written"))

    def _check_live(self, rt: CallRuntime) -> None:
        call = rt.call
        if call.state is not CallState.CONNECTING:
            return
        publishers = [p for p in call.participants.values() if p.published
                      and p.id in rt.connections]
        if len(publishers) < 2 or rt.watchdog.pending:
            return
        if not all(p.id in rt.recording for p in publishers):
            return
        expected = {(a.id, b.id) for a in publishers for b in publishers if a is not b}
        subscribed = {(viewer, source) for viewer, e in rt.media.participants.items()
                      for source in e.subscriptions}
        # Expectations are armed only once a subscription is answered, so an empty watchdog
        # alone could be early: every pair must also have been reported by its browser.
        if not expected <= subscribed or not expected <= rt.reported:
            return
        for p in publishers:
            if p.state is ParticipantState.CONNECTING:
                p.transition(ParticipantState.CONNECTED)
        call.transition(CallState.LIVE)
        self._broadcast(rt, encode("callLive", recording=True))
        self._emit("call.live", call, {})

    def _ice_detail(self, call: Call, expectation: Expectation) -> str:
        rt = self.runtime.get(call.id)
        if rt is None:
            return ""
        # Whose endpoint's ICE explains it: the publisher's for its own upload and recording,
        # the viewer's receiving endpoint for media towards the browser.
        target = expectation.source or "publish"
        state = rt.media.ice_states.get((expectation.participant, target), "no ICE activity")
        return f"ICE {state}"

    def _on_watchdog(self, call: Call, expired: Expired) -> None:
        reason = FailureReason.RECORDING_FAILED if expired.expectation.direction == "recording" \
            else FailureReason.NO_MEDIA
        log.warning("! watchdog: %s", expired.detail, extra={"call_id": call.id})
        self._spawn(self.end(call.id, reason, expired.detail))

    def _pipelines_lost(self, url: str, pipeline_ids: set[str]) -> None:
        for rt in list(self.runtime.values()):
            if rt.media.pipeline_id in pipeline_ids:
                self._spawn(self.end(rt.call.id, FailureReason.MEDIA_SERVER_LOST,
                                     f"media server {url} lost"))

    # ---------------------------------------------------------------- teardown

    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None:
        """Ends (or fails, with a reason) a call: the one path every exit takes."""
        call = self.calls.get(call_id)
        if call is None or call.finished:
            return
        rt = self.runtime.get(call_id)
        if rt is not None:
            if rt.closing:
                return
            rt.closing = True
            rt.timer.cancel()
            for handle in [*rt.reconnecting.values(), *rt.interrupted.values()]:
                if handle is not None:
                    handle.cancel()
        ring = self.rings.pop(call_id, None)
        if ring is not None:
            ring.timer.cancel()
        try:
            if reason is None:
                call.transition(CallState.ENDED)
            else:
                call.transition(CallState.FAILED, reason=reason, detail=detail)
            message = encode("callEnded") if reason is None else encode(
                "callFailed", reason=reason.value, detail=detail)
            # Everyone connected hears it, joined or only online (a consultant being rung).
            audience = {**self.online.pop(call_id, {}), **(rt.connections if rt else {})}
            for conn in audience.values():
                conn.send(message)
        finally:
            if rt is not None:
                try:
                    await rt.media.close(server_lost=reason is FailureReason.MEDIA_SERVER_LOST)
                finally:
                    for pid in [*rt.connections, *rt.reconnecting]:
                        participant = call.participants[pid]
                        if participant.state is not ParticipantState.LEFT:
                            participant.transition(ParticipantState.LEFT)
                    rt.connections.clear()
                    rt.reconnecting.clear()
                    leases, rt.leases = list(rt.leases.values()), {}
                    await asyncio.gather(*(self._revoke(lease) for lease in leases))
                    self.runtime.pop(call_id, None)
            data = {"recordings": [str(p) for p in rt.media.recordings]} if rt else {}
            if reason is None:
                self._emit("call.ended", call, data)
            else:
                self._emit("call.failed", call, {"reason": reason.value, "detail": detail,
                                                 **data})
            self._evictions[call_id] = asyncio.get_running_loop().call_later(
                self.finished_linger, self._evict, call_id)

    def _evict(self, call_id: str) -> None:
        self._evictions.pop(call_id, None)
        self.calls.pop(call_id, None)
        self.online.pop(call_id, None)

    async def shutdown(self) -> None:
        """Fails every call someone is connected to (joined, rung or waiting to be rung)."""
        waiting = {cid for cid, conns in self.online.items() if conns}
        await asyncio.gather(*(self.end(cid, FailureReason.SHUTDOWN, "the service is stopping")
                               for cid in {*self.runtime, *self.rings, *waiting}))
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        for handle in self._evictions.values():
            handle.cancel()
        self._evictions.clear()


HUB = web.AppKey("hub", Hub)
