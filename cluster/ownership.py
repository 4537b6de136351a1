"""Which signalling node runs which call, in Redis, with a fencing epoch.

A call is owned by one node at a time: `telemed:owner:<call>` holds that node and an
epoch that grows with every claim. The node's own lease is its liveness key
(`telemed:nodes:<node>`, one key per node however many calls it runs, refreshed by
`NodeLease`): a node may take a call whose owner's key has expired, and the new epoch
fences the old owner out. The old owner, if it only froze, learns at its next refresh that
its key had lapsed, stops acting on every call it held (`valid` is false meanwhile), and
gives up those whose epoch moved on (`reconcile`); the history refuses a summary written
under an old epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from mis.redis_scripts import OWNER

__all__ = ["NODES", "NodeLease", "Ownership", "stop_task"]

log = logging.getLogger(__name__)

NODES = "telemed:nodes:"
KNOWN = "telemed:nodes-known"
NODE_CALLS = "telemed:node-calls:"
#: How long a finished call's owner record stays, fencing late writes of a frozen node.
FINISHED_TTL = 86400

# Claims a call for ARGV[1] unless a living node other than it owns it. Returns
# {1, epoch, previous owner or ""} when claimed, {0, owner} when a living node has it.
CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'node')
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return {0, owner}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[1])
redis.call('PERSIST', KEYS[1])
if owner and owner ~= ARGV[1] then redis.call('SREM', ARGV[3] .. owner, ARGV[4]) end
redis.call('SADD', ARGV[3] .. ARGV[1], ARGV[4])
return {1, epoch, owner or ''}
"""

# Gives a finished call up: its owner record stays a while (fencing), the node's list
# forgets it. Only the holder of the epoch may.
RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('SREM', KEYS[2], ARGV[4])
  return 1
end
return 0
"""

# The node's lease: refreshed, and whether it had lapsed (another node may have acted).
BEAT = """
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return had
"""

#: (node, epoch): this node and the epoch it claimed, or the owner and None.
Claim = tuple[str, int | None]


class NodeLease:
    """This node's liveness key. `valid()` holds while the last refresh is recent enough
    that no other node can have found the key expired (by our own monotonic clock, with a
    margin); after a lapse it stays false until `on_lapse` has run."""

    def __init__(self, redis: aioredis.Redis, node_id: str, *, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.node_id = node_id
        self.ttl = ttl
        self.clock = clock
        self.renewed_at = -math.inf
        self.lapsed = False
        self.beats = 0
        #: Runs when a refresh finds the key had expired: what this node held may be
        #: another's now. `valid()` is false until it returns.
        self.on_lapse: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._beat = redis.register_script(BEAT)

    def valid(self) -> bool:
        return not self.lapsed and self.clock() < self.renewed_at + self.ttl * 0.8

    async def beat(self) -> None:
        sent = self.clock()
        if self.renewed_at != -math.inf and sent >= self.renewed_at + self.ttl:
            self.lapsed = True  # frozen or starved past the TTL: trust nothing yet
        had = await self._beat(keys=[NODES + self.node_id, KNOWN],
                               args=[self.node_id, max(1, int(self.ttl * 1000))])
        if not had and self.beats:
            self.lapsed = True
        self.beats += 1
        if self.lapsed:
            log.warning("! this node's lease had lapsed; checking which calls are still ours")
            if self.on_lapse is not None:
                await self.on_lapse()
            self.lapsed = False
        self.renewed_at = sent

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(NODES + node_id))

    async def orphaned(self, snap: dict[str, Any]) -> bool:
        """Whether this node may adopt the call: it ran it, or its node is gone. A record
        that names no node comes from a version before nodes were named: one node, ours."""
        owner = snap.get("node")
        return owner is None or owner == self.node_id or not await self.alive(owner)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node lease")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.beat()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("! node heartbeat failed: %s", type(exc).__name__)
            except Exception:
                log.exception("! node heartbeat failed")
            await asyncio.sleep(self.ttl / 3)

    async def stop(self, *, release: bool = True) -> None:
        """A clean stop says so at once: the calls are free to be adopted."""
        self._stopping = True
        if self._task is not None:
            await stop_task(self._task)
        self.renewed_at = -math.inf
        if release:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self.redis.delete(NODES + self.node_id)


class Ownership:
    """The calls this node holds, by epoch, and the claims that move them."""

    def __init__(self, redis: aioredis.Redis, lease: NodeLease) -> None:
        self.redis = redis
        self.lease = lease
        self.node_id = lease.node_id
        self.held: dict[str, int] = {}
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(RELEASE)
        #: The other nodes on this Redis, as last seen: alone, nobody can have taken a
        #: call from this node, however long its lease lapsed.
        self.others: list[str] = []

    async def owner(self, call_id: str) -> tuple[str | None, int | None]:
        node, epoch = await self.redis.hmget(OWNER + call_id, ["node", "epoch"])
        return (_text(node) if node is not None else None,
                int(epoch) if epoch is not None else None)

    async def claim(self, call_id: str) -> Claim:
        """Takes the call unless a living node runs it: (this node, epoch) or (owner, None)."""
        found = await self._claim(keys=[OWNER + call_id],
                                  args=[self.node_id, NODES, NODE_CALLS, call_id])
        if int(found[0]) == 1:
            epoch = int(found[1])
            self.held[call_id] = epoch
            previous = _text(found[2])
            log.info("= call claimed (epoch %d%s)", epoch,
                     f", from {previous}" if previous and previous != self.node_id else "",
                     extra={"call_id": call_id})
            return self.node_id, epoch
        return _text(found[1]), None

    def holds(self, call_id: str) -> bool:
        return call_id in self.held

    async def release(self, call_id: str) -> None:
        """The call is over: its record fences late writers for a day, then goes."""
        epoch = self.held.pop(call_id, None)
        if epoch is None:
            return
        await self._release(keys=[OWNER + call_id, NODE_CALLS + self.node_id],
                            args=[self.node_id, epoch, FINISHED_TTL, call_id])

    async def lost(self) -> list[str]:
        """Held calls whose owner record names another node or a newer epoch."""
        ids = list(self.held)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hmget(OWNER + call_id, ["node", "epoch"])
            found = await pipe.execute()
        gone = []
        for call_id, (node, epoch) in zip(ids, found, strict=True):
            if node is None or _text(node) != self.node_id or int(epoch) != self.held[call_id]:
                gone.append(call_id)
                self.held.pop(call_id, None)
        return gone

    async def calls_of(self, node_id: str) -> list[str]:
        return [_text(c) for c in await self.redis.smembers(NODE_CALLS + node_id)]

    async def dead_nodes(self) -> list[str]:
        """Nodes that ran calls and are no longer heard of (never this one)."""
        known = [_text(n) for n in await self.redis.smembers(KNOWN)]
        others = self.others = [n for n in known if n != self.node_id]
        if not others:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for node in others:
                pipe.exists(NODES + node)
                pipe.scard(NODE_CALLS + node)
            found = await pipe.execute()
        dead = []
        for i, node in enumerate(others):
            alive, calls = found[2 * i], found[2 * i + 1]
            if not alive:
                if calls:
                    dead.append(node)
                else:
                    await self.redis.srem(KNOWN, node)  # gone for good, nothing left
        return dead


async def stop_task(task: asyncio.Task[Any], timeout: float = 2.0) -> None:
    """Cancels a background loop and waits for it, boundedly: redis-py can swallow a
    cancellation that lands as a reply arrives, and a stop must never hang on that (a
    node once stayed 'stopping' for minutes)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("! %s did not stop within %.1f s; left behind", task.get_name(), timeout)
        return
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
