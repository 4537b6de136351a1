"""Start-up recovery and the booked-call expiry, as named steps of the service.

- `recover_unfinished`: what a previous run of this service left behind. Booked calls
  (`created`, `ringing`) are kept: the hub loads them from the history when someone opens
  their link. Calls that had begun (`connecting`, `live`) are kept too when this process
  takes them over (`take_over_unfinished`, once the media servers are reachable), else
  failed `shutdown`, with their TURN leases returned.
- `expire_booked`: a booked call nobody joined ends `failed/expired` (with its webhook)
  once its window plus `calls.schedule_overrun` has passed, or `calls.idle_expiry` after
  its creation when it has no window; its leases go back. `run_expiry` repeats it, on one
  node at a time (a Redis lock), so several nodes do not expire the same call twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from mis.history import CallStore
from mis.webhooks import Outbox, as_text
from signaling.call import Call, CallState
from signaling.errors import CallElsewhere
from signaling.hub import Hub
from signaling.placement import forward
from signaling.takeover import take_over
from signaling.teardown import expire_here
from turn.pool import TurnPool

__all__ = ["expire_booked", "expiry_due", "hold_places", "recover_unfinished", "run_expiry",
           "take_over_unfinished"]

log = logging.getLogger(__name__)

BOOKED = (CallState.CREATED.value, CallState.RINGING.value)
BEGUN = (CallState.CONNECTING.value, CallState.LIVE.value)
#: Whether a begun call's node is gone (or is this one), so this node may adopt it.
Orphaned = Callable[[dict[str, Any]], Awaitable[bool]]
EXPIRY_LOCK = "telemed:lock:expiry"


async def recover_unfinished(store: CallStore, outbox: Outbox | None,
                             turn: TurnPool | None, *, take_over: bool = False,
                             orphaned: Orphaned | None = None) -> list[dict[str, Any]]:
    """Fails the calls a previous run left connecting or live, unless this process takes
    them over; keeps booked ones, and those `orphaned` says a living node runs."""
    keep = BOOKED + BEGUN if take_over else BOOKED
    closed = await store.close_unfinished("the service restarted", keep=keep,
                                          orphaned=orphaned)
    for snap in closed:
        log.warning("! call left unfinished by the previous run marked failed",
                    extra={"call_id": snap["id"]})
        if turn is not None:
            await turn.release_call(snap["id"])
        if outbox is not None:
            await outbox.publish("call.failed", {
                "call": {k: v for k, v in snap.items() if k != "timeline"},
                "reason": "shutdown", "detail": snap["failureDetail"]})
    return closed


async def take_over_unfinished(hub: Hub, store: CallStore,
                               orphaned: Orphaned | None = None, *,
                               concurrency: int = 8,
                               place: Callable[[str], Awaitable[str]] | None = None
                               ) -> list[str]:
    """Adopts the calls a previous run left connecting or live (their media still runs on
    the media server), except those `orphaned` says a living node runs; those whose media
    is gone fail `media-server-lost`. Several at once: each is ~30 media-server requests,
    and the service serves only once all are adopted. Their ids; `hold_places` starts
    their participants' rejoin grace once the service serves."""
    gate = asyncio.Semaphore(concurrency)

    async def one(raw_id: bytes | str) -> str | None:
        async with gate:
            snap = await store.get(as_text(raw_id))
            if snap is None or snap["state"] not in BEGUN:
                return None
            if orphaned is not None and not await orphaned(snap):
                return None
            try:
                if place is None:
                    call: Call | None = await take_over(hub, snap)
                elif await place(snap["id"]) == hub.node_id:
                    # Several nodes: claimed first; the placement adopts what it claims.
                    call = hub.calls.get(snap["id"])
                else:
                    call = None  # a node that claimed it first runs it
            except Exception:
                log.exception("! taking the call over failed", extra={"call_id": snap["id"]})
                return None
            return None if call is None or call.finished else call.id

    found = await asyncio.gather(*(one(raw_id) for raw_id in
                                   await store.redis.smembers(f"{store.prefix}open")))
    return [call_id for call_id in found if call_id is not None]


def hold_places(hub: Hub, taken: list[str]) -> None:
    """The service serves now: the rejoin grace of everyone in a taken-over call starts."""
    for call_id in taken:
        session = hub.sessions.get(call_id)
        if session is not None:
            session.hold_places()


def expiry_due(snap: dict[str, Any], *, overrun: float, idle: float) -> float:
    """When a booked call nobody joined expires (unix seconds)."""
    schedule = snap.get("schedule")
    if schedule:
        return float(schedule["end"]) + overrun
    return float(snap["createdAt"]) + idle


async def expire_booked(hub: Hub, store: CallStore, turn: TurnPool | None, *, now: float,
                        overrun: float, idle: float) -> list[str]:
    """Ends the booked calls whose time is up and nobody is in; their ids."""
    expired = []
    for raw_id in await store.redis.smembers(f"{store.prefix}open"):
        call_id = as_text(raw_id)
        snap = await store.get(call_id)
        if snap is None or snap["state"] not in BOOKED:
            continue
        due = expiry_due(snap, overrun=overrun, idle=idle)
        if now < due:
            continue
        detail = ("nobody joined before the appointment window closed" if snap.get("schedule")
                  else "nobody joined the call in time")
        try:
            await hub.place(call_id)
        except CallElsewhere as elsewhere:
            # Someone opened its page on another node: that node decides and ends it.
            answer = await forward(hub, elsewhere.node, "expire",
                                   {"call": call_id, "detail": detail})
            if answer.get("expired"):
                expired.append(call_id)
            continue
        if not await expire_here(hub, call_id, detail):
            continue
        if turn is not None:
            # Pre-call leases a crashed process took for it, which no session holds.
            await turn.release_call(call_id)
        expired.append(call_id)
    return expired


async def run_expiry(hub: Hub, store: CallStore, turn: TurnPool | None, *, interval: float,
                     overrun: float, idle: float, clock: Any) -> None:
    """`expire_booked` every `interval`, on whichever node holds the lock this round."""
    me = uuid.uuid4().hex
    while True:
        try:
            got = await store.redis.set(EXPIRY_LOCK, me, nx=True,
                                        px=max(1, int(interval * 1000)))
            if got:
                await expire_booked(hub, store, turn, now=clock(), overrun=overrun, idle=idle)
        except (aioredis.RedisError, OSError) as exc:
            log.error("! expiring booked calls failed: %s", type(exc).__name__)
        except Exception:
            log.exception("! expiring booked calls failed")
        await asyncio.sleep(interval)
