"""Retention: recordings older than the configured period are deleted; their metadata
stays and says who deleted what, when. Every node runs it on a timer; a lock in Redis
lets one of them purge at a time (`purge_alone`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from recordings.catalog import Catalog

__all__ = ["LOCK", "LOCK_TTL", "purge", "purge_alone"]

log = logging.getLogger(__name__)

LOCK = "telemed:recordings:retention-lock"
#: The lock outlives a node that dies purging by at most this (s); renewed every third of
#: it while the purge runs, however long that takes.
LOCK_TTL = 120.0


async def purge_alone(catalog: Catalog, redis: aioredis.Redis, *, older_than: float,
                      now: float, by: str = "retention", ttl: float = LOCK_TTL
                      ) -> list[dict[str, Any]] | None:
    """`purge` while holding the nodes' retention lock; None, doing nothing, when another
    node holds it (it is purging the same recordings) or this one loses it midway (it froze
    past the lock's TTL: someone else may be purging by now)."""
    lock = Lock(redis, LOCK, timeout=ttl, blocking=False)
    if not await lock.acquire():
        return None
    try:
        work = asyncio.create_task(purge(catalog, older_than=older_than, now=now, by=by))
        stop = asyncio.Event()
        keeper = asyncio.create_task(_keep(lock, ttl, stop))
        try:
            await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            work.cancel()
            await asyncio.wait({work, keeper})
        if work.cancelled():
            log.error("! retention lock lost while purging; stopped")
            return None
        return work.result()
    finally:
        with contextlib.suppress(LockError, aioredis.RedisError, OSError):
            await lock.release()


async def _keep(lock: Lock, ttl: float, done: asyncio.Event) -> None:
    """Renews the lock until `done` is set, or returns when it was lost. An event, not a
    cancel: redis-py can swallow a cancellation that lands as a reply arrives."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), ttl / 3)
        if done.is_set():
            return
        try:
            await lock.reacquire()
        except LockError:
            return
        except (aioredis.RedisError, OSError) as exc:
            # Redis away: the lock may still be ours, and the purge will fail on its own.
            log.warning("! retention lock not renewed: %s", type(exc).__name__)


async def purge(catalog: Catalog, *, older_than: float, now: float, by: str = "retention",
                dry_run: bool = False) -> list[dict[str, Any]]:
    """Deletes the files of calls created before `older_than`; returns what it (would) do."""
    done = []
    for meta in await catalog.find(since=0, limit=100_000):
        if meta.get("deleted") or (meta.get("createdAt") or now) >= older_than:
            continue
        folder = catalog.root / meta["folder"]
        if not await asyncio.to_thread(folder.is_dir):
            log.warning("! retention: folder %s is gone; index entry kept", folder,
                        extra={"call_id": meta["call"]})
            continue
        names = [f["name"] for f in meta.get("files", [])]
        if meta.get("composed"):
            names.append(meta["composed"]["name"])
        done.append({"call": meta["call"], "files": names})
        if dry_run:
            continue
        for name in names:
            await asyncio.to_thread((folder / name).unlink, missing_ok=True)
        meta.update(state="deleted", deleted={"at": now, "by": by, "files": names})
        meta.pop("folder", None)
        await catalog.write(folder, meta)
        log.info("= recordings deleted by %s: %s", by, ", ".join(names),
                 extra={"call_id": meta["call"]})
    return done
