"""Durable call history in Redis, and the one ordered path from hub events to it and to
the webhook outbox.

The hub reports events synchronously; `EventSink` snapshots the call at that moment and
writes snapshots and webhook events one at a time, in the order they happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from signaling.call import Call, CallState
from signaling.webhooks import Outbox, as_text

__all__ = ["CallStore", "EventSink"]

log = logging.getLogger(__name__)

PREFIX = "telemed:calls:"
FINAL = {CallState.ENDED.value, CallState.FAILED.value}


def snapshot(call: Call) -> dict[str, Any]:
    """What the MIS may read about a call, now and after a restart."""
    events = call.timeline.as_list()
    times = {e["state"]: e["at"] for e in events if e["event"] == "state"}
    live_at = times.get("live")
    end_at = times.get("ended") or times.get("failed")
    networks: dict[str, list[str]] = {}
    for e in events:
        # The browser's end of each selected ICE pair: host (same network), srflx/prflx
        # (through NAT), relay (through TURN); with udp or tcp.
        if e["event"] == "ice-pair" and e["remote"] not in networks.get(e["participant"], []):
            networks.setdefault(e["participant"], []).append(e["remote"])
    return {
        **call.describe(),
        "liveAt": live_at, "endedAt": end_at,
        "duration": round(end_at - live_at, 3) if live_at and end_at else None,
        "joins": [{"participant": e["participant"], "at": e["at"]}
                  for e in events if e["event"] in ("joined", "rejoined")],
        "networks": networks,
        "timeline": events,
    }


class CallStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def save(self, snap: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(f"{PREFIX}{snap['id']}", json.dumps(snap, separators=(",", ":")))
            tx.zadd(f"{PREFIX}index", {snap["id"]: snap["createdAt"]})
            if snap["state"] in FINAL:
                tx.srem(f"{PREFIX}open", snap["id"])
            else:
                tx.sadd(f"{PREFIX}open", snap["id"])
            await tx.execute()

    async def get(self, call_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"{PREFIX}{call_id}")
        return json.loads(raw) if raw is not None else None

    async def find(self, *, state: str | None = None, since: float = 0.0, limit: int = 50,
                   cursor: float | None = None) -> tuple[list[dict[str, Any]], float | None]:
        """Newest first; `cursor` is the `createdAt` to continue below."""
        top = f"({cursor}" if cursor is not None else "+inf"
        out: list[dict[str, Any]] = []
        offset = 0
        while len(out) < limit:
            ids = await self.redis.zrevrangebyscore(f"{PREFIX}index", top, since,
                                                    start=offset, num=limit * 2)
            if not ids:
                break
            offset += len(ids)
            for raw in await self.redis.mget([f"{PREFIX}{as_text(i)}" for i in ids]):
                if raw is None:
                    continue
                snap = json.loads(raw)
                if state is None or snap["state"] == state:
                    out.append({k: v for k, v in snap.items() if k != "timeline"})
                    if len(out) == limit:
                        break
        next_cursor = out[-1]["createdAt"] if len(out) == limit else None
        return out, next_cursor

    async def close_unfinished(self, detail: str, now: float | None = None
                               ) -> list[dict[str, Any]]:
        """At start-up: calls a previous process left unfinished can no longer go on.

        Assumes one signalling process per Redis (the supported deployment)."""
        closed = []
        for raw_id in await self.redis.smembers(f"{PREFIX}open"):
            snap = await self.get(as_text(raw_id))
            if snap is None or snap["state"] in FINAL:
                await self.redis.srem(f"{PREFIX}open", raw_id)
                continue
            # The call ended, as far as anyone can tell, with the last thing heard of it.
            timeline = snap.setdefault("timeline", [])
            last = max((e["at"] for e in timeline), default=snap["createdAt"])
            at = now if now is not None else time.time()
            timeline.append({"at": at, "event": "state", "state": "failed",
                             "reason": "shutdown", "detail": detail})
            snap.update(state="failed", failure="shutdown", failureDetail=detail, endedAt=last,
                        duration=round(last - snap["liveAt"], 3) if snap.get("liveAt")
                        else None)
            await self.save(snap)
            closed.append(snap)
        return closed


class EventSink:
    """Hub hook: snapshots and webhook events, written in order by one task."""

    def __init__(self, store: CallStore, outbox: Outbox | None) -> None:
        self.store = store
        self.outbox = outbox
        self._queue: asyncio.Queue[tuple[str, dict[str, Any], dict[str, Any]] | None] = (
            asyncio.Queue())
        self._task: asyncio.Task[None] | None = None
        self._queued = 0
        self._written = 0
        self._progress = asyncio.Condition()

    def __call__(self, event: str, call: Call, data: dict[str, Any]) -> None:
        snap = snapshot(call)
        payload = {"call": {k: v for k, v in snap.items() if k != "timeline"}, **data}
        self._queue.put_nowait((event, snap, payload))
        self._queued += 1

    async def settle(self) -> None:
        """Returns once everything reported so far is in Redis (the API answers after it)."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target or self._task is None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call-events")

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            event, snap, payload = item
            for attempt in range(5):
                try:
                    await self.store.save(snap)
                    if self.outbox is not None and event != "call.snapshot":
                        await self.outbox.publish(event, payload)
                    break
                except (aioredis.RedisError, OSError) as exc:
                    log.error("! cannot record %s (attempt %d): %s", event, attempt + 1,
                              type(exc).__name__, extra={"call_id": snap["id"]})
                    await asyncio.sleep(0.2 * 2 ** attempt)
            async with self._progress:
                self._written += 1
                self._progress.notify_all()

    async def flush(self) -> None:
        """Writes what is queued, then stops."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
