"""`CallSession`: one running call. It owns the `Call`, its media, its watchdog and one
`ParticipantSession` per participant; closing it closes them all (one cascade).

Requests reach it through the hub; media events arrive typed (`signaling.events`). The live
and media-loss verdicts are pure (`signaling.liveness`, `signaling.watchdog`); this class
applies them (`signaling.media_verdicts`) and does the talking. Its participants' TURN
leases are handled in `signaling.call_turn`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kurento_ctl.errors import KurentoError
from kurento_ctl.pool import NoMediaServer
from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.call_turn import CallTurn
from signaling.errors import CallError, MediaError
from signaling.events import CallEvent
from signaling.liveness import MediaLoss
from signaling.media import CallMedia
from signaling.media_verdicts import MediaVerdicts
from signaling.participant import Participant, ParticipantState
from signaling.participant_session import Connection, ParticipantSession
from signaling.protocol import encode
from signaling.sdp import offer_kinds
from signaling.watchdog import Expectation, MediaWatchdog, WatchdogTimer
from turn.lease import TurnLease, ice_servers_for
from turn.pool import TurnPool

__all__ = ["CallServices", "CallSession"]

log = logging.getLogger(__name__)

IN_CALL = (ParticipantState.CONNECTING, ParticipantState.CONNECTED,
           ParticipantState.RECONNECTING)


@dataclass(frozen=True, kw_only=True)
class CallServices:
    """What a call session needs from the hub around it."""

    turn: TurnPool | None
    watchdog_timeout: float
    rejoin_grace: float
    media_loss_report: float
    emit: Callable[[CallEvent, Call, dict[str, Any]], None]
    #: Runs a background task; its failure is logged with the call id.
    spawn: Callable[[Awaitable[Any], str], None]
    #: Ends the call (or fails it with a reason): the hub's one teardown path.
    end: Callable[[str, FailureReason | None, str], Awaitable[None]]
    #: The same from a timer callback: tells everyone at once, releases after.
    end_soon: Callable[[str, FailureReason | None, str], None]
    #: Revokes a lease (release=False: only its replaced credentials); never raises.
    revoke: Callable[[TurnLease, bool], Awaitable[None]]


class CallSession(MediaVerdicts, CallTurn):
    def __init__(self, call: Call, media: CallMedia, services: CallServices) -> None:
        self.call = call
        self.media = media
        self.services = services
        self.watchdog = MediaWatchdog(services.watchdog_timeout)
        self.timer = WatchdogTimer(watchdog=self.watchdog, on_expired=self._on_watchdog,
                                   detail=self._ice_detail)
        self.members: dict[str, ParticipantSession] = {}
        self.closing = False
        self._loss_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- members

    def member(self, pid: str) -> ParticipantSession:
        m = self.members.get(pid)
        if m is None:
            m = self.members[pid] = ParticipantSession(
                self.call.participants[pid], MediaLoss(self.services.media_loss_report))
        return m

    def connected(self) -> dict[str, Connection]:
        return {pid: m.conn for pid, m in self.members.items() if m.conn is not None}

    def send(self, pid: str, text: str) -> None:
        m = self.members.get(pid)
        if m is not None and m.conn is not None:
            m.conn.send(text)

    def broadcast(self, text: str, *, but: str | None = None) -> None:
        for pid, conn in self.connected().items():
            if pid != but:
                conn.send(text)

    def check_member(self, conn: Connection, pid: str) -> ParticipantSession:
        m = self.members.get(pid)
        if m is None or m.conn is not conn or self.closing:
            raise CallError("not in that call", code="call.not_found")
        return m

    def _still_open(self, conn: Connection, pid: str) -> ParticipantSession:
        """After a media-server round trip: the call may have ended meanwhile (arming its
        watchdog then would leave a timer behind the teardown), or this socket may have
        been replaced or gone (its result no longer counts)."""
        if self.closing:
            raise CallError("the call is over", code="call.ended")
        return self.check_member(conn, pid)

    # ---------------------------------------------------------------- joining

    async def join(self, conn: Connection, pid: str, *, resume: bool = False
                   ) -> dict[str, Any]:
        call = self.call
        # First, so that an exhausted pool refuses the join before anything changed.
        lease = await self.lease_turn(pid)
        m = self.member(pid)
        if self.closing or call.finished:
            # The call ended while the lease was being taken: teardown has run without it.
            if lease is not None and m.lease is lease:
                m.lease = None
                await self.services.revoke(lease, True)
            raise CallError("the call is over", code="call.ended")
        # Everything below runs without an await: decided on the state as it is now, after
        # the lease, so two joins in one loop turn cannot both move the call.
        participant = m.participant
        entry = self.media.participants.get(pid)
        # Media kept for this participant while nobody held their place: endpoints a
        # takeover adopted. The browser keeps them only if it still holds its side.
        kept = m.grace is not None and m.conn is None and entry is not None \
            and entry.publisher is not None
        resumed = resume and kept
        if m.stop_grace():
            call.timeline.add("resumed" if resumed else "rejoined", participant=pid)
        old = m.conn
        replaced = old is not None and old is not conn
        stale = replaced or (kept and not resumed)
        if old is not None and replaced:
            # The same person on a new device or a new socket: the newest wins.
            old.send(encode("replaced"))
        if stale:
            self._forget_media_of(pid)
        if participant.state is not ParticipantState.CONNECTING:
            participant.transition(ParticipantState.CONNECTING)
        participant.joins += 1
        if not resumed:
            participant.published = frozenset()
        elif call.state is CallState.LIVE:
            participant.transition(ParticipantState.CONNECTED)
        m.conn = conn
        # A referral connects when the consultant accepts the ring, not when the doctor joins.
        if call.state in (CallState.CREATED, CallState.RINGING) \
                and call.kind is not CallKind.REFERRAL:
            call.transition(CallState.CONNECTING)
        call.timeline.add("joined", participant=pid)
        if not resumed:
            self.broadcast(encode("participantJoined", participant=participant.describe()),
                           but=pid)
        self.services.emit(CallEvent.PARTICIPANT_JOINED, call,
                           {"participant": pid, **({"resumed": True} if resumed else {})})
        joined = {
            "call": {"id": call.id, "kind": call.kind.value, "state": call.state.value},
            "you": participant.describe(),
            "participants": [p.describe() for p in call.participants.values() if p.id != pid],
            "iceServers": ice_servers_for(lease),
            "recording": True,
            "watchdogTimeout": self.services.watchdog_timeout,
            "resumed": resumed,
        }
        if resumed:
            assert entry is not None
            joined["media"] = {"publish": True, "subscriptions": sorted(entry.subscriptions)}
            self._check_live()
        if stale:
            await self.media.remove(pid)  # the old socket's (or the dead process's) endpoints
        return joined

    def resume(self) -> None:
        """Taken over from a process that died, before its media is re-read: a call not
        live yet expects its uploads and recordings again (the re-read proves them)."""
        now = self.timer.now()
        if self.call.state is CallState.CONNECTING:
            for p in self.taken_over():
                for kind in p.published:
                    self.watchdog.expect(Expectation(p.id, "from-browser", kind), now)
                self.watchdog.expect(Expectation(p.id, "recording", "file"), now)
        self.timer.rearm()

    def hold_places(self) -> None:
        """Once the service serves: whoever was in gets the rejoin grace to come back
        from now (not from the adoption, which may have been many calls earlier), and a
        call not live yet waits for their browsers' reports from now."""
        loop = asyncio.get_running_loop()
        now = self.timer.now()
        if self.closing:
            return
        for p in self.taken_over():
            m = self.member(p.id)
            if m.conn is not None or m.grace is not None:
                continue
            m.grace = loop.call_later(self.services.rejoin_grace, self._grace_timer, p.id)
            if self.call.state is CallState.CONNECTING and p.published:
                for other in self.taken_over():
                    if other.id != p.id and other.published:
                        self.watchdog.expect(
                            Expectation(p.id, "browser-report", "media", other.id), now)
        self.timer.rearm()

    def taken_over(self) -> list[Participant]:
        """Who was in the call when it was taken over and has not come back yet."""
        return [p for p in self.call.participants.values()
                if p.state is ParticipantState.RECONNECTING]

    async def publish(self, conn: Connection, pid: str, sdp: str) -> str:
        self.check_member(conn, pid)
        kinds = offer_kinds(sdp, "send")
        try:
            answer = await self.media.publish(pid, sdp, kinds, turn_url=self._kurento_turn(pid))
        except NoMediaServer:
            raise MediaError("no media server is reachable", code="media.unavailable") from None
        except KurentoError as exc:
            raise MediaError(f"media server error: {exc}", code="media.unavailable") from None
        self._still_open(conn, pid)
        participant = self.call.participants[pid]
        participant.published = kinds
        self.call.media_server = self.media.server.url if self.media.server else None
        self.call.pipeline = self.media.pipeline_id
        now = self.timer.now()
        for kind in kinds:
            self.watchdog.expect(Expectation(pid, "from-browser", kind), now)
        self.watchdog.expect(Expectation(pid, "recording", "file"), now)
        # Media must also reach each publisher's browser from every other publisher, even
        # if its client never subscribes; someone who has not published yet (a patient on
        # the camera prompt) is not timed until their own negotiation completes.
        for other in self.call.participants.values():
            if other.id != pid and other.published and other.id in self.connected():
                self.watchdog.expect(Expectation(pid, "browser-report", "media", other.id), now)
                self.watchdog.expect(Expectation(other.id, "browser-report", "media", pid), now)
        self.timer.rearm()
        self.broadcast(encode("participantPublished", participant=pid, kinds=sorted(kinds)),
                       but=pid)
        return answer

    async def subscribe(self, conn: Connection, pid: str, source: str, sdp: str) -> str:
        self.check_member(conn, pid)
        other = self.call.participants.get(source)
        if other is None or source == pid:
            raise CallError("no such participant to receive", code="participant.not_found")
        offer_kinds(sdp, "recv")
        try:
            answer = await self.media.subscribe(pid, source, sdp,
                                                turn_url=self._kurento_turn(pid))
        except KurentoError as exc:
            raise MediaError(f"media server error: {exc}", code="media.unavailable") from None
        self._still_open(conn, pid)
        now = self.timer.now()
        for kind in other.published:
            self.watchdog.expect(Expectation(pid, "to-browser", kind, source), now)
        self.watchdog.expect(Expectation(pid, "browser-report", "media", source), now)
        self.timer.rearm()
        return answer

    async def candidate(self, conn: Connection, pid: str, target: str,
                        candidate: dict[str, Any]) -> None:
        self.check_member(conn, pid)
        await self.media.add_candidate(pid, target, candidate)

    def client_event(self, pid: str, event: str, data: dict[str, Any]) -> None:
        kept = {k: data[k] for k in list(data)[:16]}
        self.call.timeline.add(f"client.{event}"[:64], participant=pid, data=kept)
        source = data.get("participant")
        if event == "mediaReceived" and isinstance(source, str):
            self.member(pid).reported.add(source)
            self._satisfy(Expectation(pid, "browser-report", "media", source))
        target = data.get("target")
        if event == "pcFailed" and data.get("what") == "iceConnectionState" \
                and (target == "publish" or target in self.call.participants):
            # Only real endpoints: a client inventing targets must not grow the set.
            self.media.filter.browser.failed.add((pid, str(target)))

    # ---------------------------------------------------------------- leaving

    async def disconnected(self, conn: Connection, pid: str, grace: float) -> None:
        """The socket dropped without a `leave`: hold the place for the rejoin grace."""
        m = self.members.get(pid)
        if m is None or m.conn is not conn:
            return
        if grace <= 0 or self.closing:
            await self.leave(conn, pid, why="disconnected")
            return
        m.conn = None
        m.participant.transition(ParticipantState.RECONNECTING)
        self.call.timeline.add("disconnected", participant=pid, grace=grace)
        log.info("= %s disconnected; may rejoin for %g s", pid, grace,
                 extra={"call_id": self.call.id})
        m.grace = asyncio.get_running_loop().call_later(
            grace, lambda: self.services.spawn(self._grace_over(pid), self.call.id))
        self.broadcast(encode("participantReconnecting", participant=pid, grace=grace))
        await self._drop_media(pid)

    def _grace_timer(self, pid: str) -> None:
        self.services.spawn(self._grace_over(pid), self.call.id)

    async def _grace_over(self, pid: str) -> None:
        m = self.members.get(pid)
        if m is None or m.grace is None:
            return
        m.grace = None
        await self.gone(pid, "disconnected")

    async def leave(self, conn: Connection, pid: str, why: str = "left") -> None:
        m = self.members.get(pid)
        if m is None or m.conn is not conn:
            return
        m.conn = None
        await self.gone(pid, why)

    async def gone(self, pid: str, why: str) -> None:
        """Someone is out of the call for good (left, removed, grace over)."""
        m = self.member(pid)
        # State first, before any await: a teardown running meanwhile sees them gone.
        m.stop_grace()
        m.conn = None
        if m.participant.state is not ParticipantState.LEFT:
            m.participant.transition(ParticipantState.LEFT)
        self.call.timeline.add("left", participant=pid, why=why)
        self.services.emit(CallEvent.PARTICIPANT_LEFT, self.call,
                           {"participant": pid, "why": why})
        if self.closing:
            return  # the teardown returns the lease with the others'
        lease, m.lease = m.lease, None
        self.broadcast(encode("participantLeft", participant=pid))
        if not any(other.present for other in self.members.values()):
            if lease is not None:
                await self.services.revoke(lease, True)
            await self.services.end(self.call.id, None, "")
            return
        self._forget_media_of(pid)
        self._check_live()
        if lease is not None:
            await self.services.revoke(lease, True)
        await self.media.remove(pid)

    def _forget_media_of(self, pid: str) -> None:
        """What `pid`'s endpoints proved, and what others proved about them, no longer
        holds: synchronous, so no event in between sees half of it."""
        for m in self.members.values():
            m.reported.discard(pid)
            m.loss.forget(pid)
        self.member(pid).forget_media()
        self.watchdog.forget(pid)
        self.timer.rearm()
        self._rearm_loss()

    async def _drop_media(self, pid: str) -> None:
        self._forget_media_of(pid)
        await self.media.remove(pid)

    # ---------------------------------------------------------------- teardown

    def begin_close(self) -> None:
        """The first, synchronous step of the teardown: no timer fires and no event counts
        from here on."""
        self.closing = True
        self.timer.cancel()
        if self._loss_timer is not None:
            self._loss_timer.cancel()
            self._loss_timer = None

    def freeze(self) -> None:
        """The service stops and leaves this call to the next start: no timer fires and
        no event counts any more, and nothing is released."""
        self.begin_close()
        for m in self.members.values():
            m.stop_grace()

    async def close(self, *, server_lost: bool) -> None:
        """Releases the media (recorders finalized) and closes every participant; their
        leases go back. Idempotent after `begin_close`."""
        try:
            await self.media.close(server_lost=server_lost)
        finally:
            # Those still in it leave with the call, and the MIS hears it of each of them,
            # before the call's own end (the hub sends that after this).
            still_in = [pid for pid, m in self.members.items()
                        if m.participant.state in IN_CALL]
            leases = [lease for m in self.members.values() if (lease := m.close()) is not None]
            for pid in still_in:
                self.services.emit(CallEvent.PARTICIPANT_LEFT, self.call,
                                   {"participant": pid, "why": "call-ended"})
            await asyncio.gather(*(self.services.revoke(lease, True) for lease in leases))
