"""Which signalling nodes are alive: each node keeps a key with a short TTL in Redis while
it runs. A call's record names the node running it (`node`); a node adopts, at start-up,
the begun calls that are its own (it restarted) or whose node's key has expired (it died),
never those of a node that is alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis

__all__ = ["NodeHeartbeat"]

log = logging.getLogger(__name__)

PREFIX = "telemed:nodes:"


class NodeHeartbeat:
    def __init__(self, redis: aioredis.Redis, node_id: str, *, ttl: float) -> None:
        self.redis = redis
        self.node_id = node_id
        self.ttl = ttl
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        await self.redis.set(f"{PREFIX}{self.node_id}", "1", px=max(1, int(self.ttl * 1000)))

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(f"{PREFIX}{node_id}"))

    async def orphaned(self, snap: dict[str, Any]) -> bool:
        """Whether this node may adopt the call: it ran it, or its node is gone. A record
        that names no node comes from a version before nodes were named: one node, ours."""
        owner = snap.get("node")
        return owner is None or owner == self.node_id or not await self.alive(owner)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("! node heartbeat failed: %s", type(exc).__name__)
            await asyncio.sleep(self.ttl / 3)

    async def stop(self) -> None:
        """A clean stop says so at once: the calls are free to be adopted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self.redis.delete(f"{PREFIX}{self.node_id}")
