"""`Teardown`: every way calls leave this node, in one place.

`end` is the one path every exit takes: it marks the session closing, finishes the call,
tells everyone connected (all before any await), then closes the session (media, then its
participants) and tells the hooks. A finished call lingers in memory for late requests,
then is evicted. `suspend` is the stop that leaves calls to the next start; `shutdown` the
one that fails them. `docs/teardown.md` lists every exit path and what it releases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.exceptions import RedisError

from kurento_ctl.errors import KurentoError
from signaling.background import Background
from signaling.call import Call, FailureReason
from signaling.call_session import CallSession
from signaling.errors import CallError
from signaling.events import CallEvent
from signaling.participant_session import Connection
from signaling.presence import Presence
from signaling.protocol import encode
from signaling.ringing import Referrals

__all__ = ["Teardown", "TeardownHost", "expire_here", "fail_on_bug"]

# The hub's logger, as before the split: whichever part of the hub speaks.
log = logging.getLogger("signaling.hub")


class TeardownHost(Protocol):
    """What teardown reads from the hub."""

    calls: dict[str, Call]
    sessions: dict[str, CallSession]
    presence: Presence
    referrals: Referrals
    finished_linger: float
    suspended: bool
    #: The hub's hooks and background tasks, whose tasks shutdown waits for.
    background: Background

    #: Whether this node may act on a call now (several nodes); what a clean stop runs
    #: before the sockets close.
    may_act: Callable[[str], bool]
    on_suspend: list[Callable[[], Awaitable[None]]]

    def emit(self, event: CallEvent, call: Call, data: dict[str, Any]) -> None: ...
    def end_soon(self, call_id: str, reason: FailureReason | None = None,
                 detail: str = "") -> None: ...
    def spawn(self, coro: Awaitable[Any], call_id: str) -> None: ...
    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None: ...


#: Failures of the world outside, not of our code: the paths that meet them handle them
#: (a lost media server fails the call `media-server-lost` on its own).
NOT_BUGS = (OSError, TimeoutError, RedisError, KurentoError, CallError)


async def fail_on_bug(host: TeardownHost, coro: Awaitable[Any], call_id: str) -> Any:
    """`coro`, a call's background work; a bug in it fails the call `internal`. Its state
    is then in doubt, and a clean failure finalises the recordings and tells the MIS and
    everyone in it, where carrying on could leave the call hanging half-changed."""
    try:
        return await coro
    except NOT_BUGS:
        raise
    except Exception as exc:
        session = host.sessions.get(call_id)
        if session is not None and not session.closing and not session.call.finished:
            log.error("! a bug in the call's background work: the call fails (internal)",
                      exc_info=exc, extra={"call_id": call_id})
            await host.end(call_id, FailureReason.INTERNAL,
                           f"{type(exc).__name__} in the service; the log has the details")
        raise


class Teardown:
    def __init__(self, host: TeardownHost) -> None:
        self.host = host
        #: Finished calls waiting to be forgotten, by call id.
        self.evictions: dict[str, asyncio.TimerHandle] = {}

    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None:
        announced = self.announce_end(call_id, reason, detail)
        if announced is not None:
            await self.release(announced, reason, detail)

    def end_soon(self, call_id: str, reason: FailureReason | None = None,
                 detail: str = "") -> None:
        announced = self.announce_end(call_id, reason, detail)
        if announced is not None:
            self.host.spawn(self.release(announced, reason, detail), call_id)

    def announce_end(self, call_id: str, reason: FailureReason | None, detail: str
                     ) -> tuple[Call, CallSession | None] | None:
        """The synchronous first step of `end`: the call is over and everyone connected
        hears it. None if it was over already (or is being ended)."""
        host = self.host
        call = host.calls.get(call_id)
        if call is None or call.finished:
            return None
        if not host.may_act(call_id):
            # Asked again shortly: by then this node knows whether the call is still its.
            log.warning("! not ending the call yet: this node's ownership is unconfirmed",
                        extra={"call_id": call_id})
            asyncio.get_running_loop().call_later(
                1.0, lambda: host.end_soon(call_id, reason, detail))
            return None
        session = host.sessions.get(call_id)
        if session is not None:
            if session.closing:
                return None
            session.begin_close()
        host.referrals.ringing.stop(call_id)
        try:
            call.finish(reason, detail)
            message = encode("callEnded") if reason is None else encode(
                "callFailed", reason=reason.value, detail=detail)
            # Everyone connected hears it, joined or only online (a consultant being rung).
            audience = {**host.presence.pop_call(call_id),
                        **(session.connected() if session else {})}
            for conn in audience.values():
                conn.send(message)
        except Exception:
            # Whatever went wrong telling them, what the call holds is still released.
            log.exception("! ending the call failed; releasing it anyway",
                          extra={"call_id": call_id})
        return call, session

    async def release(self, announced: tuple[Call, CallSession | None],
                      reason: FailureReason | None, detail: str) -> None:
        call, session = announced
        try:
            if session is not None:
                try:
                    await session.close(server_lost=reason is FailureReason.MEDIA_SERVER_LOST)
                finally:
                    self.host.sessions.pop(call.id, None)
        finally:
            data = {"recordings": [str(p) for p in session.media.recordings]} if session else {}
            if reason is None:
                self.host.emit(CallEvent.ENDED, call, data)
            else:
                self.host.emit(CallEvent.FAILED, call, {"reason": reason.value,
                                                        "detail": detail, **data})
            self.evictions[call.id] = asyncio.get_running_loop().call_later(
                self.host.finished_linger, self.evict, call.id)

    def evict(self, call_id: str) -> None:
        self.evictions.pop(call_id, None)
        self.host.calls.pop(call_id, None)
        self.host.presence.pop_call(call_id)

    def cancel_evictions(self) -> None:
        for handle in self.evictions.values():
            handle.cancel()
        self.evictions.clear()

    async def kick(self, call_id: str, pid: str) -> None:
        """The MIS removes a participant; they cannot come back with their token."""
        host = self.host
        call = host.calls.get(call_id)
        if call is None:
            raise CallError("no such call", code="call.not_found")
        if call.finished:
            raise CallError("the call is over", code="call.ended")
        if pid not in call.participants:
            raise CallError("no such participant", code="participant.not_found")
        call.participants[pid].extra["removed"] = True
        # An entry has the history write the call, so the removal is in Redis for every
        # node (the workstations) even when the removed person was never connected.
        call.timeline.add("removed", participant=pid)
        host.presence.drop(call_id, pid)
        session = host.sessions.get(call_id)
        m = session.members.get(pid) if session else None
        if session is None or m is None:
            return
        if m.conn is not None:
            m.conn.send(encode("removed"))
            await session.leave(m.conn, pid, why="removed")
        elif m.reconnecting:
            await session.gone(pid, "removed")

    def pipelines_lost(self, url: str, pipeline_ids: set[str]) -> None:
        for session in list(self.host.sessions.values()):
            if session.media.pipeline_id in pipeline_ids:
                self.host.spawn(self.host.end(session.call.id, FailureReason.MEDIA_SERVER_LOST,
                                              f"media server {url} lost"), session.call.id)

    async def suspend(self) -> None:
        host = self.host
        host.suspended = True
        message = encode("serviceRestarting")
        audience: list[Connection] = []
        for session in host.sessions.values():
            session.freeze()
            audience += session.connected().values()
        for step in host.on_suspend:
            try:
                await step()
            except Exception:
                log.exception("! a step of the clean stop failed")
        for call_id in list(host.presence.calls()):
            audience += host.presence.pop_call(call_id).values()
        for conn in {id(c): c for c in audience}.values():
            conn.send(message)
            conn.close_soon()
        for call_id in list(host.referrals.ringing.rings):
            host.referrals.ringing.stop(call_id)  # a ring does not outlive its socket
        self.cancel_evictions()
        if running := sum(not s.call.finished for s in host.sessions.values()):
            log.warning("! stopping with %d calls left running for the next start", running)

    async def shutdown(self) -> None:
        host = self.host
        # Through the hub's `end`, so that whatever wraps it (a benchmark's timer) sees these.
        await asyncio.gather(*(host.end(cid, FailureReason.SHUTDOWN, "the service is stopping")
                               for cid in {*host.sessions, *host.referrals.ringing.rings,
                                           *host.presence.calls()}))
        await host.background.drain()
        self.cancel_evictions()


class ExpiryHost(Protocol):
    sessions: dict[str, CallSession]

    async def load(self, call_id: str) -> Call | None: ...
    async def end(self, call_id: str, reason: FailureReason | None = None,
                  detail: str = "") -> None: ...


async def expire_here(hub: ExpiryHost, call_id: str, detail: str) -> bool:
    """Ends a booked call this node runs, unless someone is in it; whether it did."""
    call = await hub.load(call_id)
    if call is None or call.finished:
        return False
    session = hub.sessions.get(call_id)
    if session is not None and any(m.present for m in session.members.values()):
        return False  # a doctor waiting in a referral that was never answered
    # Someone came but the TURN pool had no credentials for them: say so, rather than
    # "nobody came".
    refused = sorted({str(e.get("participant")) for e in call.timeline.as_list()
                      if e.get("event") == "turn-exhausted"})
    if refused:
        detail = f"refused TURN credentials (pool exhausted): {', '.join(refused)}; {detail}"
    log.info("= booked call expired: %s", detail, extra={"call_id": call_id})
    await hub.end(call_id, FailureReason.TURN_EXHAUSTED if refused else FailureReason.EXPIRED,
                  detail)
    return True
