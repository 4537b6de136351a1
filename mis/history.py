"""Durable call history in Redis, and the one ordered path from hub events to it and to
the webhook outbox.

The hub reports events synchronously; `EventSink` takes the call's summary and its new
timeline entries at that moment and writes them and webhook events in the order they
happened. Before an event is queued it is appended to a journal file (fsynced by a
background thread, `mis.journal`), so neither a crash before Redis has it nor a Redis
outage loses it: the next start replays the journal, and event ids and entry numbers make
the replay idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from mis.journal import Journal
from mis.jsonsafe import sanitize
from mis.redis_scripts import APPEND, FENCED_SET, OPEN_SYNC, OWNER, READ
from mis.staff_calls import queue_staff_index
from mis.webhooks import Outbox, as_text
from signaling.call import Call, CallState
from signaling.timeline import TIMELINE_LIMIT

__all__ = ["CallStore", "EventSink"]

log = logging.getLogger(__name__)

PREFIX = "telemed:calls:"
FINAL = {CallState.ENDED.value, CallState.FAILED.value}


#: Fields of the stored summary that only the history needs (not in webhooks).
BOOKKEEPING = ("timelineSeq", "clientEventsDropped")
#: Where a page read from the history starts and where its timeline ends (never stored).
PAGING = ("timelineFrom", "timelineEnd")

def summary(call: Call) -> dict[str, Any]:
    """What the MIS may read about a call, now and after a restart, but its timeline."""
    timeline = call.timeline
    live_at = timeline.states.get("live")
    end_at = timeline.states.get("ended") or timeline.states.get("failed")
    return {
        **call.describe(),
        "liveAt": live_at, "endedAt": end_at,
        "duration": round(end_at - live_at, 3) if live_at and end_at else None,
        "joins": list(timeline.joins),
        "networks": {p: list(n) for p, n in timeline.networks.items()},
        "timelineSeq": timeline.seq, "clientEventsDropped": timeline.client_dropped,
    }


def snapshot(call: Call) -> dict[str, Any]:
    """The summary with every timeline entry still in memory."""
    return {**summary(call), "timeline": call.timeline.as_list()}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class CallStore:
    """A call is a JSON summary (`telemed:calls:<id>`) plus its timeline, a capped Redis
    list of numbered entries (`<id>:timeline`, numbers counted in `<id>:seq`) that is only
    ever appended to: no event rewrites the whole call, and several signalling processes
    may share one Redis."""

    def __init__(self, redis: aioredis.Redis, *, limit: int = TIMELINE_LIMIT) -> None:
        self.redis = redis
        self.prefix = PREFIX
        self.limit = limit

    def _queue_save(self, tx: Any, meta: dict[str, Any], first: int,
                    entries: list[str]) -> None:
        key = f"{PREFIX}{meta['id']}"
        epoch = meta.get("epoch")
        tx.eval(FENCED_SET, 2, key, f"{OWNER}{meta['id']}",
                _dumps({k: v for k, v in meta.items() if k != "timeline" and k not in PAGING}),
                "" if epoch is None else str(epoch))
        if entries:
            tx.eval(APPEND, 2, f"{key}:timeline", f"{key}:seq", self.limit, first, *entries)
        tx.zadd(f"{PREFIX}index", {meta["id"]: meta["createdAt"]})
        tx.eval(OPEN_SYNC, 2, key, f"{PREFIX}open", meta["id"])
        queue_staff_index(tx, meta["id"])

    async def save_many(self, saves: list[tuple[dict[str, Any], int, list[str]]]) -> set[str]:
        """Summaries and their new entries (JSON, numbered from `first`), in one
        transaction. The ids of calls whose summary was refused: another node owns them
        under a newer epoch."""
        starts = []
        async with self.redis.pipeline(transaction=True) as tx:
            for meta, first, entries in saves:
                starts.append(len(tx.command_stack))
                self._queue_save(tx, meta, first, entries)
            results = await tx.execute()
        return {meta["id"] for (meta, _, _), at in zip(saves, starts, strict=True)
                if results[at] == 0}

    async def save(self, snap: dict[str, Any], first: int = 0,
                   entries: list[dict[str, Any]] | None = None) -> None:
        await self.save_many([(snap, first, [_dumps(e) for e in entries or []])])

    async def get(self, call_id: str, *, start: int | None = None,
                  limit: int | None = None) -> dict[str, Any] | None:
        """The summary with its timeline: every entry kept, or a page of up to `limit` from
        number `start` (the oldest kept when None); `timelineFrom` numbers the first."""
        key = f"{PREFIX}{call_id}"
        # One script: another process appending meanwhile cannot shift the page.
        found = await self.redis.eval(
            READ, 3, key, f"{key}:timeline", f"{key}:seq",
            -1 if start is None else start, -1 if limit is None else max(1, limit))
        if found is None:
            return None
        raw, length, stored, first, listed = found
        snap: dict[str, Any] = json.loads(raw)
        legacy = snap.pop("timeline", None)
        if legacy is not None and not length:
            # Written before timelines were lists: the whole timeline is in the summary,
            # unnumbered in Redis (`timelineSeq` 0), so a process going on with the call
            # writes it out again as a list.
            stored, end = 0, len(legacy)
            first = 0 if start is None else min(max(start, 0), end)
            entries = legacy[first:end if limit is None else first + limit]
        else:
            end = stored
            entries = [json.loads(e) for e in listed]
        snap.update(timelineSeq=stored, timelineFrom=first, timelineEnd=end, timeline=entries)
        return snap

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
                    out.append({k: v for k, v in snap.items()
                                if k != "timeline" and k not in BOOKKEEPING})
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
            timeline = snap["timeline"]
            last = max((e["at"] for e in timeline), default=snap["createdAt"])
            at = now if now is not None else time.time()
            entry = {"at": at, "event": "state", "state": "failed", "reason": "shutdown",
                     "detail": detail}
            # Entries a summary-only history holds are written out as a list with it.
            unwritten = timeline[len(timeline) - (snap["timelineEnd"] - snap["timelineSeq"]):]
            timeline.append(entry)
            snap.update(state="failed", failure="shutdown", failureDetail=detail, endedAt=last,
                        duration=round(last - snap["liveAt"], 3) if snap.get("liveAt")
                        else None)
            await self.save(snap, snap["timelineSeq"], [*unwritten, entry])
            for internal in (*BOOKKEEPING, *PAGING):
                snap.pop(internal, None)
            closed.append(snap)
        return closed


#: (event, summary, webhook payload, event id, time, number of the first entry, entries)
Item = tuple[str, dict[str, Any], dict[str, Any], str, float, int, list[dict[str, Any]]]
#: An item that only brings the call's history up to date: no webhook.
SNAPSHOT = "call.snapshot"
#: Items written to Redis in one transaction at most.
BATCH = 256


class EventSink:
    """Hub hook: each call's new timeline entries, its summary and its webhook events,
    journalled, then written in order by one task.

    Entries added between the call's events (client diagnostics, participants' moves) are
    gathered once per event-loop turn into one `call.snapshot` item per call, so a flood
    of them costs an append each, never a rewrite of the call."""

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
        self._file = None if journal is None else Journal(journal)
        self._dirty: dict[str, Call] = {}
        self._flush_soon: asyncio.Handle | None = None

    def __call__(self, event: str, call: Call, data: dict[str, Any]) -> None:
        if call.timeline.listener is None:
            call.timeline.listener = lambda: self._touched(call)
        self._dirty.pop(call.id, None)
        self._enqueue(event, call, data)

    def _touched(self, call: Call) -> None:
        self._dirty[call.id] = call
        if self._flush_soon is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a script): the call's next event takes the entries
            self._flush_soon = loop.call_soon(self._flush_dirty)

    def _take_dirty_now(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
        self._flush_dirty()

    def _flush_dirty(self) -> None:
        self._flush_soon = None
        dirty, self._dirty = self._dirty, {}
        for call in dirty.values():
            if call.timeline.seq > call.timeline.written:
                self._enqueue(SNAPSHOT, call, {})

    def _enqueue(self, event: str, call: Call, data: dict[str, Any]) -> None:
        meta = summary(call)
        first, entries = call.timeline.take_unwritten()
        payload = {"call": {k: v for k, v in meta.items() if k not in BOOKKEEPING}, **data}
        item: Item = (event, meta, payload, uuid.uuid4().hex, time.time(), first, entries)
        try:
            line = json.dumps(item, separators=(",", ":"), allow_nan=False)
        except (RecursionError, ValueError):
            # A client's diagnostics nested past the encoder's limit, or a NaN: written in
            # a strict form rather than lost (this hook raising would drop the event).
            item = (event, sanitize(meta), sanitize(payload), item[3], item[4], first,
                    sanitize(entries))
            line = json.dumps(item, separators=(",", ":"), allow_nan=False)
        if self._file is not None:
            # Entries between the call's events are flushed to the OS, not fsynced.
            self._file.append(line, durable=event != SNAPSHOT)
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
                    item = json.loads(line)
                    if len(item) == 5:
                        # Journalled before timelines were appended: the whole timeline
                        # is in the summary, numbered to end where `timelineSeq` says.
                        snap = item[1]
                        entries = snap.pop("timeline", None) or []
                        first = max(0, int(snap.get("timelineSeq") or 0) - len(entries))
                        item = [*item, first, entries]
                    event, meta, payload, event_id, at, first, entries = item
                except (ValueError, TypeError, AttributeError):
                    continue  # a line torn by the crash: it was never acknowledged
                self._queue.put_nowait((event, meta, payload, event_id, at, first, entries))
                self._queued += 1
                count += 1
        if count:
            log.warning("! replaying %d call events journalled by a previous run", count)
        return count

    async def settle(self) -> None:
        """Returns once everything reported so far is fsynced in the journal, then once it
        is in Redis (the API answers after it)."""
        self._take_dirty_now()
        target = self._queued
        if self._file is not None:
            await self._file.synced()
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target or self._task is None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call-events")

    async def _write(self, batch: list[Item]) -> None:
        """Summaries and entries of the batch in one transaction, then its webhook events
        in order."""
        saves = [(m, first, [_dumps(e) for e in entries])
                 for _, m, _, _, _, first, entries in batch]
        event, meta = batch[-1][0], batch[-1][1]
        attempt = 0
        while True:
            try:
                fenced = await self.store.save_many(saves)
                for name, m, payload, event_id, at, _, _ in batch:
                    if m["id"] in fenced:
                        # Written by a node that no longer owns the call: it did not happen.
                        log.warning("! %s not recorded: another node owns the call now",
                                    name, extra={"call_id": m["id"]})
                        continue
                    if self.outbox is not None and name != SNAPSHOT:
                        # Idempotent by event id: a retry after a failure midway is safe.
                        await self.outbox.publish(name, payload, event_id=event_id, at=at)
                return
            except (aioredis.RedisError, OSError) as exc:
                # Never dropped: the queue waits (in order) for Redis, the journal holds it.
                attempt += 1
                log.error("! cannot record %s (attempt %d): %s", event, attempt,
                          type(exc).__name__, extra={"call_id": meta["id"]})
                await asyncio.sleep(min(self.retry_cap, 0.2 * 2 ** min(attempt, 10)))
            except Exception:
                # A bug, not an outage: retrying cannot help, and the events behind it must
                # not wait for ever. The journal still has it for a post-mortem.
                log.exception("! recording %s failed", event, extra={"call_id": meta.get("id")})
                return

    def _batch(self, item: Item) -> tuple[list[Item], bool]:
        """`item` and those queued right behind it; True when the stop sentinel was met."""
        batch = [item]
        while len(batch) < BATCH and not self._queue.empty():
            following = self._queue.get_nowait()
            if following is None:
                return batch, True
            batch.append(following)
        return batch, False

    async def _run(self) -> None:
        stop = False
        while not stop and (item := await self._queue.get()) is not None:
            batch, stop = self._batch(item)
            await self._write(batch)
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()
            if self._file is not None and self._written >= self._queued:
                # Everything journalled is in Redis: start the journal afresh.
                self._file.truncate()

    async def flush(self, timeout: float | None = None) -> None:
        """Writes what is queued, then stops; past `timeout` (Redis away) what is left
        stays in the journal for the next start."""
        self._take_dirty_now()
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
            await self._file.close()
            self._file = None


STORE = web.AppKey("store", CallStore)
SINK = web.AppKey("sink", EventSink)
