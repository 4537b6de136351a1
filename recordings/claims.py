"""Which node finalises a call's recordings: a claim key per call in Redis, with a TTL,
renewed while the node works. Another node that is handed the same call (its start-up scan,
the orphan sweep) waits; if the claimer dies or freezes past the TTL, it takes over. A
claimer checks its claim before each write (`fence`), so one that wakes from a freeze
after losing it writes nothing more."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

__all__ = ["PREFIX", "CallClaim", "ClaimLost"]

PREFIX = "telemed:recordings:finalizing:"

#: Takes the claim if nobody holds it or this token already does: a claim whose SET timed
#: out on a hanging Redis may still have landed, and must not lock its own node out.
#: KEYS: claim. ARGV: token, TTL (ms).
ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
#: Extends the claim only if it is still this token's. KEYS: claim. ARGV: token, TTL (ms).
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
#: Deletes the claim only if it is still this token's. KEYS: claim. ARGV: token.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class ClaimLost(Exception):
    """Another node holds the call's claim now: this one must stop finalising it."""


class CallClaim:
    def __init__(self, redis: aioredis.Redis, call_id: str, ttl: float, token: str) -> None:
        self.redis = redis
        self.key = PREFIX + call_id
        self.ttl = ttl
        #: Names the claimer (one per worker, i.e. per node): another token is someone else.
        self.token = token

    @property
    def _ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def acquire(self) -> bool:
        return bool(await self.redis.register_script(ACQUIRE)(keys=[self.key],
                                                              args=[self.token, self._ms]))

    async def remaining(self) -> float:
        """Seconds until someone else's claim runs out (0 if there is none)."""
        left = await self.redis.pttl(self.key)
        return max(0.0, left / 1000)

    async def fence(self) -> None:
        """Raises ClaimLost unless the claim is still ours; awaited before every write."""
        held = await self.redis.get(self.key)
        if held is None or (held if isinstance(held, str) else held.decode()) != self.token:
            raise ClaimLost(self.key)

    async def renew(self) -> bool:
        return bool(await self.redis.register_script(RENEW)(keys=[self.key],
                                                            args=[self.token, self._ms]))

    async def release(self) -> None:
        await self.redis.register_script(RELEASE)(keys=[self.key], args=[self.token])

    async def keep(self, done: asyncio.Event) -> None:
        """Renews until `done` is set; returns then, or once the claim is lost. An event,
        not a cancel: redis-py can swallow a cancellation that lands as a reply arrives,
        and the renewing would then go on for ever."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.ttl / 3)
            if done.is_set():
                return
            try:
                if not await self.renew():
                    return
            except (aioredis.RedisError, OSError):
                continue  # the fence before the next write decides
