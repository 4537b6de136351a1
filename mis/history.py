"""Durable call history in Redis, and the one ordered path from hub events to it and to
the webhook outbox.

The hub reports events synchronously; `EventSink` snapshots the call at that moment and
writes snapshots and webhook events one at a time, in the order they happened. Before an
event is queued it is appended (and fsynced) to a journal file, so neither a crash before
Redis has it nor a Redis outage loses it: the next start replays the journal, and event
ids make the replay idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis
from aiohttp import web

from mis.jsonsafe import sanitize
from mis.webhooks import Outbox, as_text
from signaling.call import Call, CallState

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
        self.prefix = PREFIX

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

    async def close_unfinished(self, detail: str, now: float | None = None, *,
                               keep: tuple[str, ...] = (),
                               orphaned: Callable[[dict[str, Any]], Awaitable[bool]] | None
                               = None) -> list[dict[str, Any]]:
        """At start-up: calls a previous process left unfinished can no longer go on;
        those in a `keep` state (booked calls) are left as they are, and so are those
        `orphaned` says another, living node runs."""
        closed = []
        for raw_id in await self.redis.smembers(f"{PREFIX}open"):
            snap = await self.get(as_text(raw_id))
            if snap is None or snap["state"] in FINAL:
                await self.redis.srem(f"{PREFIX}open", raw_id)
                continue
            if snap["state"] in keep:
                continue
            if orphaned is not None and not await orphaned(snap):
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


Item = tuple[str, dict[str, Any], dict[str, Any], str, float]


def _private_append(path: Path) -> TextIO:
    """The journal holds patients' names and the MIS's metadata: its owner's alone, even
    when an earlier version left it readable to others."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


class EventSink:
    """Hub hook: snapshots and webhook events, journalled, then written in order by one task."""

    def __init__(self, store: CallStore, outbox: Outbox | None, *,
                 journal: Path | None = None, retry_cap: float = 5.0) -> None:
        self.store = store
        self.outbox = outbox
        self.journal = journal
        self.retry_cap = retry_cap
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._queued = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._file = None if journal is None else _private_append(journal)

    def __call__(self, event: str, call: Call, data: dict[str, Any]) -> None:
        snap = snapshot(call)
        payload = {"call": {k: v for k, v in snap.items() if k != "timeline"}, **data}
        item: Item = (event, snap, payload, uuid.uuid4().hex, time.time())
        try:
            line = json.dumps(item, separators=(",", ":"), allow_nan=False)
        except (RecursionError, ValueError):
            # A client's diagnostics nested past the encoder's limit, or a NaN: written in
            # a strict form rather than lost (this hook raising would drop the event).
            snap, payload = sanitize(snap), sanitize(payload)
            item = (event, snap, payload, item[3], item[4])
            line = json.dumps(item, separators=(",", ":"), allow_nan=False)
        if self._file is not None:
            # A few lines per call: a synchronous fsync costs less than the loss it prevents.
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        self._queue.put_nowait(item)
        self._queued += 1

    def replay(self) -> int:
        """Queues what the journal holds from a previous run (call before `start`)."""
        if self.journal is None or not self.journal.exists():
            return 0
        count = 0
        with open(self.journal, encoding="utf-8") as f:
            for line in f:
                try:
                    event, snap, payload, event_id, at = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a line torn by the crash: it was never acknowledged
                self._queue.put_nowait((event, snap, payload, event_id, at))
                self._queued += 1
                count += 1
        if count:
            log.warning("! replaying %d call events journalled by a previous run", count)
        return count

    async def settle(self) -> None:
        """Returns once everything reported so far is in Redis (the API answers after it)."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target or self._task is None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call-events")

    async def _write(self, item: Item) -> None:
        event, snap, payload, event_id, at = item
        attempt = 0
        while True:
            try:
                await self.store.save(snap)
                if self.outbox is not None and event != "call.snapshot":
                    await self.outbox.publish(event, payload, event_id=event_id, at=at)
                return
            except (aioredis.RedisError, OSError) as exc:
                # Never dropped: the queue waits (in order) for Redis, the journal holds it.
                attempt += 1
                log.error("! cannot record %s (attempt %d): %s", event, attempt,
                          type(exc).__name__, extra={"call_id": snap["id"]})
                await asyncio.sleep(min(self.retry_cap, 0.2 * 2 ** min(attempt, 10)))
            except Exception:
                # A bug, not an outage: retrying cannot help, and the events behind it must
                # not wait for ever. The journal still has it for a post-mortem.
                log.exception("! recording %s failed", event, extra={"call_id": snap.get("id")})
                return

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self._write(item)
            async with self._progress:
                self._written += 1
                self._progress.notify_all()
            if self._file is not None and self._written >= self._queued:
                # Everything journalled is in Redis: start the journal afresh.
                self._file.truncate(0)

    async def flush(self, timeout: float | None = None) -> None:
        """Writes what is queued, then stops; past `timeout` (Redis away) what is left
        stays in the journal for the next start."""
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error("! %d call events not yet in Redis; kept in the journal",
                          self._queued - self._written)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._file is not None:
            self._file.close()
            self._file = None


STORE = web.AppKey("store", CallStore)
SINK = web.AppKey("sink", EventSink)
