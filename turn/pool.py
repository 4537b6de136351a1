"""`TurnPool`: a bounded set of lease slots in Redis, shared by every signalling node.

A lease takes a numbered slot atomically (one Lua script), so two nodes never hand out
the same slot; slots of a node that crashed come back when their TTL passes. The provider
turns a slot into credentials (for reTurn, slot n is account n of the users file).

A node renews the leases it holds once less than half their TTL is left (`renew()`, run
every quarter TTL by `run_renewals()`), so a call longer than one TTL keeps its slot and
its credentials stay valid for the new allocations a late subscription needs; a node that
died renews nothing, and its slots return.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from turn.lease import TurnExhausted, TurnLease, TurnProvider

__all__ = ["TurnPool"]

log = logging.getLogger(__name__)

PREFIX = "telemed:turn:"
# KEYS: expiries (zset member->expiry), slots (hash slot->member), holders (hash member->slot)
# ARGV: member, now, expiry, size
ACQUIRE = """
local now = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(expired) do
  local s = redis.call('HGET', KEYS[3], m)
  if s then redis.call('HDEL', KEYS[2], s) end
  redis.call('HDEL', KEYS[3], m)
  redis.call('ZREM', KEYS[1], m)
end
local slot = redis.call('HGET', KEYS[3], ARGV[1])
if not slot then
  for i = 0, tonumber(ARGV[4]) - 1 do
    if redis.call('HEXISTS', KEYS[2], i) == 0 then slot = i; break end
  end
  if not slot then return -1 end
  redis.call('HSET', KEYS[2], slot, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], slot)
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return tonumber(slot)
"""
# KEYS: expiries; ARGV: member, expiry. 0 when the slot is no longer this member's.
EXTEND = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""
RELEASE = """
local s = redis.call('HGET', KEYS[3], ARGV[1])
if s then redis.call('HDEL', KEYS[2], s) end
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


class TurnPool:
    def __init__(self, redis: aioredis.Redis, provider: TurnProvider, *, size: int,
                 ttl: float, namespace: str = "default",
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.provider = provider
        self.size = size
        self.ttl = ttl
        self.clock = clock
        base = f"{PREFIX}{namespace}:"
        self._keys = [base + "expiries", base + "slots", base + "holders"]
        self._details = base + "lease:"
        self._acquire = redis.register_script(ACQUIRE)
        self._release = redis.register_script(RELEASE)
        self._extend = redis.register_script(EXTEND)
        #: Leases this node handed out and has not returned, by `TurnLease.key`.
        self.held: dict[str, TurnLease] = {}
        #: Told about every renewed lease (the hub may pass new credentials on).
        self.on_renewed: list[Callable[[TurnLease], None]] = []
        self.issued = 0
        self.exhausted = 0
        self.renewed = 0

    async def lease(self, call_id: str, participant: str) -> TurnLease:
        """Credentials for one participant of one call; a rejoin keeps its slot."""
        now = self.clock()
        member = f"{call_id}/{participant}"
        slot = int(await self._acquire(keys=self._keys,
                                       args=[member, now, now + self.ttl, self.size]))
        if slot < 0:
            self.exhausted += 1
            log.warning("! TURN pool exhausted (%d leases)", self.size,
                        extra={"call_id": call_id})
            raise TurnExhausted(f"all {self.size} TURN leases are in use")
        lease = await self.provider.issue(call_id, participant, self.ttl, now, slot)
        await self._describe(lease, slot)
        self.held[lease.key] = lease
        self.issued += 1
        return lease

    async def _describe(self, lease: TurnLease, slot: int) -> None:
        await self.redis.set(self._details + lease.key, json.dumps({
            "call": lease.call_id, "participant": lease.participant,
            "username": lease.username, "expires": lease.expires, "slot": slot}),
            ex=max(1, int(self.ttl) + 1))

    async def renew(self) -> list[TurnLease]:
        """Extends the held leases with less than half their TTL left; returns them."""
        now = self.clock()
        renewed = []
        for key, lease in list(self.held.items()):
            if lease.expires - now > self.ttl / 2:
                continue
            extended = await self._extend(keys=self._keys[:1], args=[key, now + self.ttl])
            if self.held.get(key) is not lease:
                continue  # released (or replaced by a rejoin) meanwhile
            if not extended:
                # Renewed too late: the slot expired and may be someone else's by now.
                self.held.pop(key, None)
                log.warning("! TURN lease %s expired before it was renewed", key,
                            extra={"call_id": lease.call_id})
                continue
            fresh = await self.provider.renew(lease, self.ttl, now)
            if self.held.get(key) is not lease:
                # Released while renewing: take back what the renewal may have created.
                if fresh.username != lease.username:
                    await self.provider.revoke(fresh)
                continue
            self.held[key] = fresh
            slot = await self.redis.hget(self._keys[2], key)
            await self._describe(fresh, int(slot) if slot is not None else -1)
            self.renewed += 1
            renewed.append(fresh)
            for listener in self.on_renewed:
                try:
                    listener(fresh)
                except Exception:
                    log.exception("! TURN renewal listener failed",
                                  extra={"call_id": lease.call_id})
        return renewed

    async def run_renewals(self) -> None:
        """`renew()` every quarter TTL, until cancelled; Redis trouble is retried."""
        while True:
            await asyncio.sleep(self.ttl / 4)
            try:
                await self.renew()
            except (aioredis.RedisError, OSError) as exc:
                log.error("! renewing TURN leases failed: %s", type(exc).__name__)

    async def release(self, lease: TurnLease) -> None:
        """Returns the slot; the provider revokes what the TURN server lets it."""
        self.held.pop(lease.key, None)
        await self._release(keys=self._keys, args=[lease.key])
        await self.redis.delete(self._details + lease.key)
        await self.provider.revoke(lease)

    async def release_call(self, call_id: str) -> int:
        """Returns every slot a call holds in Redis, whichever process leased it (one that
        crashed cannot return its own); how many it returned."""
        returned = 0
        async for raw in self.redis.hscan_iter(self._keys[2], match=f"{call_id}/*"):
            member = (raw[0] if isinstance(raw, tuple) else raw)
            key = member.decode() if isinstance(member, bytes) else str(member)
            held = self.held.get(key)
            details = await self.redis.get(self._details + key)
            if held is None and details is not None:
                info = json.loads(details)
                held = TurnLease(call_id=info["call"], participant=info["participant"],
                                 username=info["username"], credential="", urls=(),
                                 expires=float(info["expires"]),
                                 extra={"slot": info.get("slot")})
            if held is not None:
                await self.release(held)
            else:  # no details left: the slot alone
                await self._release(keys=self._keys, args=[key])
            returned += 1
        return returned

    async def active(self) -> list[dict[str, Any]]:
        members = await self.redis.zrangebyscore(self._keys[0], self.clock(), "+inf")
        out = []
        for m in members:
            raw = await self.redis.get(self._details + (m.decode() if isinstance(m, bytes)
                                                        else str(m)))
            if raw is not None:
                out.append(json.loads(raw))
        return out

    async def in_use(self) -> int:
        return int(await self.redis.zcount(self._keys[0], self.clock(), "+inf"))
