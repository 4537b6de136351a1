"""`Hub`: calls, who is connected to them, and the one teardown path every exit takes.

The hub turns protocol requests into `CallMedia` work, arms the media watchdog as offers
are answered, declares a call live once media flows every way and every recorder records,
and ends or fails calls: hang-up, leave, watchdog, media-server loss, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiortc.sdp import SessionDescription

from kurento_ctl.errors import KurentoError
from kurento_ctl.pool import KurentoPool, NoMediaServer
from signaling.call import Call, CallKind, CallState, FailureReason
from signaling.candidates import CandidateFilter, CandidatePolicy
from signaling.errors import CallError, MediaError
from signaling.media import CallMedia, MediaListener
from signaling.participant import Participant, ParticipantState
from signaling.protocol import encode
from signaling.tokens import JoinClaims
from signaling.watchdog import Expectation, Expired, MediaWatchdog, WatchdogTimer
from turn.credentials import ice_servers, shared_secret_credential

__all__ = ["Connection", "Hub", "offer_kinds"]

log = logging.getLogger(__name__)

CallHook = Callable[[str, Call, dict[str, Any]], Awaitable[None] | None]


class Connection(Protocol):
    def send(self, text: str) -> None: ...


def offer_kinds(sdp: str, wanted: str = "send") -> frozenset[str]:
    """Media kinds an offer sends (or receives), from aiortc's SDP parser."""
    try:
        parsed = SessionDescription.parse(sdp)
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        raise MediaError(f"invalid SDP: {exc}"[:200], code="sdp.invalid") from None
    kinds = {m.kind for m in parsed.media
             if m.kind in ("audio", "video") and m.port != 0
             and wanted in (m.direction or "sendrecv")}
    if not kinds:
        raise MediaError(f"the offer {wanted}s neither audio nor video", code="sdp.invalid")
    return frozenset(kinds)


@dataclass
class CallRuntime:
    call: Call
    media: CallMedia
    watchdog: MediaWatchdog
    timer: WatchdogTimer
    connections: dict[str, Connection] = field(default_factory=dict)
    recording: set[str] = field(default_factory=set)
    closing: bool = False


class Hub:
    def __init__(self, *, pool: KurentoPool, recordings_root: Path, watchdog_timeout: float,
                 candidate_policy: CandidatePolicy | None = None,
                 turn_urls: tuple[str, ...] = (), turn_secret: str = "",
                 max_conference_size: int = 8) -> None:
        self.pool = pool
        self.recordings_root = recordings_root
        self.watchdog_timeout = watchdog_timeout
        self.candidate_policy = candidate_policy or CandidatePolicy()
        self.turn_urls = turn_urls
        self.turn_secret = turn_secret
        self.max_conference_size = max_conference_size
        self.calls: dict[str, Call] = {}
        self.runtime: dict[str, CallRuntime] = {}
        self.hooks: list[CallHook] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        pool.on_pipelines_lost(self._pipelines_lost)

    # ---------------------------------------------------------------- calls

    def create_call(self, kind: CallKind, participants: list[tuple[str, str, str]],
                    metadata: dict[str, Any] | None = None) -> Call:
        size = self.max_conference_size if kind is CallKind.CONFERENCE else 2
        if len(participants) > size:
            raise CallError(f"a {kind.value} takes at most {size} participants",
                            code="call.full")
        call = Call(kind=kind, max_participants=size, metadata=metadata or {})
        for pid, name, role in participants:
            call.participants[pid] = Participant(id=pid, name=name, role=role)
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
        return call, participant

    async def join(self, conn: Connection, claims: JoinClaims) -> dict[str, Any]:
        call, participant = self.lookup(claims)
        rt = self._runtime(call)
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
        if call.state in (CallState.CREATED, CallState.RINGING):
            call.transition(CallState.CONNECTING)
        call.timeline.add("joined", participant=participant.id)
        credential = shared_secret_credential(
            self.turn_secret, call_id=call.id, participant=participant.id, now=time.time(),
            ttl=3600) if self.turn_secret else None
        self._broadcast(rt, encode("participantJoined", participant=participant.describe()),
                        but=participant.id)
        self._emit("participant.joined", call, {"participant": participant.id})
        return {
            "call": {"id": call.id, "kind": call.kind.value, "state": call.state.value},
            "you": participant.describe(),
            "participants": [p.describe() for p in call.participants.values()
                             if p.id != participant.id],
            "iceServers": ice_servers(self.turn_urls, credential),
            "recording": True,
            "watchdogTimeout": self.watchdog_timeout,
        }

    def _member(self, conn: Connection, call_id: str, pid: str) -> CallRuntime:
        rt = self.runtime.get(call_id)
        if rt is None or rt.connections.get(pid) is not conn or rt.closing:
            raise CallError("not in that call", code="call.not_found")
        return rt

    async def publish(self, conn: Connection, call_id: str, pid: str, sdp: str) -> str:
        rt = self._member(conn, call_id, pid)
        kinds = offer_kinds(sdp, "send")
        try:
            answer = await rt.media.publish(pid, sdp, kinds)
        except NoMediaServer:
            raise MediaError("no media server is reachable", code="media.unavailable") from None
        except KurentoError as exc:
            raise MediaError(f"media server error: {exc}", code="media.unavailable") from None
        participant = rt.call.participants[pid]
        participant.published = kinds
        rt.call.media_server = rt.media.server.url if rt.media.server else None
        now = rt.timer.now()
        for kind in kinds:
            rt.watchdog.expect(Expectation(pid, "from-browser", kind), now)
        rt.watchdog.expect(Expectation(pid, "recording", "file"), now)
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
            answer = await rt.media.subscribe(pid, source, sdp)
        except KurentoError as exc:
            raise MediaError(f"media server error: {exc}", code="media.unavailable") from None
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
        rt = self._member(conn, call_id, pid)
        rt.call.timeline.add(f"client.{event}"[:64], participant=pid,
                             data={k: data[k] for k in list(data)[:16]})
        if event == "mediaReceived" and isinstance(data.get("participant"), str):
            self._satisfy(rt, Expectation(pid, "browser-report", "media", data["participant"]))

    async def leave(self, conn: Connection, call_id: str, pid: str, why: str = "left") -> None:
        rt = self.runtime.get(call_id)
        if rt is None or rt.connections.get(pid) is not conn:
            return
        del rt.connections[pid]
        participant = rt.call.participants[pid]
        if participant.state is not ParticipantState.LEFT:
            participant.transition(ParticipantState.LEFT)
        rt.call.timeline.add("left", participant=pid, why=why)
        self._emit("participant.left", rt.call, {"participant": pid, "why": why})
        if rt.closing:
            return
        self._broadcast(rt, encode("participantLeft", participant=pid))
        if not rt.connections:
            await self.end(call_id)
            return
        await self._drop_media(rt, pid)
        self._check_live(rt)

    async def _drop_media(self, rt: CallRuntime, pid: str) -> None:
        rt.watchdog.forget(pid)
        rt.timer.rearm()
        rt.recording.discard(pid)
        await rt.media.remove(pid)

    # ---------------------------------------------------------------- media events

    def _satisfy(self, rt: CallRuntime, expectation: Expectation) -> None:
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
        if not flowing:
            if call.state is CallState.LIVE:
                self._broadcast(rt, encode("mediaInterrupted", participant=owner,
                                           target=target, kind=kind))
            return
        if target == "publish" and direction == "out":
            self._satisfy(rt, Expectation(owner, "from-browser", kind))
            self._send(call.id, owner, encode("mediaFlowing", direction="sending", kind=kind))
        elif target != "publish" and direction == "in":
            self._satisfy(rt, Expectation(owner, "to-browser", kind, target))

    def _on_recording(self, call: Call, pid: str) -> None:
        rt = self.runtime.get(call.id)
        if rt is None:
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
            self._spawn(self.end(call.id, FailureReason.RECORDING_FAILED, what))

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
        if not expected <= subscribed:
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
        target = "publish" if expectation.direction == "from-browser" else expectation.source
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
        try:
            if reason is None:
                call.transition(CallState.ENDED)
            else:
                call.transition(CallState.FAILED, reason=reason, detail=detail)
            if rt is not None:
                message = encode("callEnded") if reason is None else encode(
                    "callFailed", reason=reason.value, detail=detail)
                self._broadcast(rt, message)
        finally:
            if rt is not None:
                try:
                    await rt.media.close()
                finally:
                    for pid in list(rt.connections):
                        participant = call.participants[pid]
                        if participant.state is not ParticipantState.LEFT:
                            participant.transition(ParticipantState.LEFT)
                    rt.connections.clear()
                    self.runtime.pop(call_id, None)
            data = {"recordings": [str(p) for p in rt.media.recordings]} if rt else {}
            if reason is None:
                self._emit("call.ended", call, data)
            else:
                self._emit("call.failed", call, {"reason": reason.value, "detail": detail,
                                                 **data})

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.end(cid, FailureReason.SHUTDOWN, "the service is stopping")
                               for cid in list(self.runtime)))
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
