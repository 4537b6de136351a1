"""The orphan sweep (kurento_ctl.sweep) as the service runs it: a pipeline is live while its
call is unfinished in Redis, whichever node holds it, or while this node holds the call.

Redis is the judge so that several nodes sharing one Redis and one media server never
release each other's calls, and so that a call a restarted node takes over (unfinished in
Redis, held by nobody yet) keeps its pipeline. This node's own calls count as well: one
whose snapshot has not reached Redis yet (Redis away, its journal still replaying) must
not lose its media for it. A Redis that does not answer makes the question fail, and the
sweep then releases nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from kurento_ctl.sweep import LiveCalls, SweepReport
from mis.history import CallStore
from recordings.catalog import Catalog
from recordings.worker import FINAL, RecordingWorker
from signaling.call import CallState
from signaling.hub import Hub

__all__ = ["FINISHED", "finalize_released", "live_calls", "sweep_turn"]

FINISHED = frozenset({CallState.ENDED.value, CallState.FAILED.value})


def live_calls(store: CallStore, hub: Hub) -> LiveCalls:
    """The sweep's liveness question, answered from this node's calls and then Redis."""

    async def live(call_ids: set[str]) -> set[str]:
        held = {i for i in call_ids
                if (call := hub.calls.get(i)) is not None and not call.finished}
        rest = sorted(call_ids - held)
        snaps = await asyncio.gather(*(store.get(i) for i in rest))
        unfinished = {i for i, snap in zip(rest, snaps, strict=True)
                      if snap is not None and snap.get("state") not in FINISHED}
        return held | unfinished

    return live


def finalize_released(worker: RecordingWorker, catalog: Catalog, store: CallStore
                      ) -> Callable[[SweepReport], Awaitable[None]]:
    """After a sweep released orphans: their calls' recording folders go to the worker
    (metadata, checks, webhooks), as the start-up scan does for a dead process's calls.
    Every node's sweep may hand the same call over: its claim (recordings.claims) lets
    one node finalize it. Without this, a call whose node died and stayed dead would have
    whole files and no catalogue entry until some node restarts."""

    async def finalize(report: SweepReport) -> None:
        calls = {report.tagged[p][0] for p in report.released}
        for folder in await asyncio.to_thread(catalog.folders):
            if folder.name not in calls:
                continue
            meta = await asyncio.to_thread(catalog.read, folder)
            if meta is not None and meta.get("state") in FINAL:
                continue
            snap = await store.get(folder.name) or {"id": folder.name}
            worker.submit(folder, snap, recovered=True)

    return finalize


SWEEP_LOCK = "telemed:lock:orphan-sweep"


def sweep_turn(redis: aioredis.Redis, interval: float) -> Callable[[], Awaitable[bool]]:
    """One node sweeps per `interval`: the first to take the round's lock. Redis away:
    this node sweeps (a sweep twice is harmless; none at all leaks media)."""
    me = uuid.uuid4().hex

    async def mine() -> bool:
        try:
            return bool(await redis.set(SWEEP_LOCK, me, nx=True,
                                        px=max(1, int(interval * 1000 * 0.9))))
        except (aioredis.RedisError, OSError):
            return True

    return mine
