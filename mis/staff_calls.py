"""Per-person index of open calls for doctors and consultants, in Redis.

`telemed:calls:staff:<participant id>` is a set of call ids, written in the same transaction
as the call's summary (`CallStore`), so every node that records a call keeps it current.
The summary stays the truth: a read (one Lua script, so it sees one moment) returns only
summaries still open with the person in them as staff and not removed, and drops ids that
are no longer so (left behind by a write a newer owner fenced off, say). Calls recorded
before this index existed are added once, on the first read of any workstation.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

__all__ = ["STAFF_ROLES", "open_calls_of", "queue_staff_index"]

#: Roles that have a workstation.
STAFF_ROLES = ("doctor", "consultant")
#: The per-person sets share the history's prefix (`mis.history.PREFIX`).
PREFIX = "telemed:calls:"
BACKFILLED = f"{PREFIX}staff-indexed"

# The one test of "this person's open call" on the Redis side; `_OPEN` ends with it.
_MINE = """
local function mine(raw, who)
  if not raw then return false end
  local ok, snap = pcall(cjson.decode, raw)
  if not ok or snap.state == 'ended' or snap.state == 'failed' then return false end
  for _, p in ipairs(snap.participants or {}) do
    if p.id == who then
      return (p.role == 'doctor' or p.role == 'consultant') and p.removed ~= true
    end
  end
  return false
end
"""

#: The open summaries of KEYS[1]'s person (ARGV[1]); ids that are not are taken out.
#: KEYS: the person's set. ARGV: the person's id, the summaries' key prefix.
_OPEN = _MINE + """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[2] .. id)
  if mine(raw, ARGV[1]) then
    out[#out + 1] = raw
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""

#: Indexes every open call once (those recorded before the index existed).
#: KEYS: the set of open calls, the marker. ARGV: the key prefix.
_BACKFILL = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[1] .. id)
  local ok, snap = pcall(cjson.decode, raw or 'null')
  if ok and type(snap) == 'table' and snap.state ~= 'ended' and snap.state ~= 'failed' then
    for _, p in ipairs(snap.participants or {}) do
      if (p.role == 'doctor' or p.role == 'consultant') and p.removed ~= true then
        redis.call('SADD', ARGV[1] .. 'staff:' .. p.id, id)
        n = n + 1
      end
    end
  end
end
redis.call('SET', KEYS[2], '1')
return n
"""


def queue_staff_index(tx: Any, meta: dict[str, Any], final: bool) -> None:
    """Queues, in the caller's transaction, the index writes for one summary."""
    for p in meta.get("participants", ()):
        if p.get("role") not in STAFF_ROLES:
            continue
        key = f"{PREFIX}staff:{p['id']}"
        if final or p.get("removed"):
            tx.srem(key, meta["id"])
        else:
            tx.sadd(key, meta["id"])


async def open_calls_of(redis: aioredis.Redis, subject: str) -> list[dict[str, Any]]:
    """The stored summaries of the open calls `subject` takes part in as staff (any order)."""
    # A marker read per call is cheaper than the script's SMEMBERS of every open call.
    if not await redis.exists(BACKFILLED):
        await redis.eval(_BACKFILL, 2, f"{PREFIX}open", BACKFILLED, PREFIX)
    found = await redis.eval(_OPEN, 1, f"{PREFIX}staff:{subject}", subject, PREFIX)
    return [json.loads(raw) for raw in found]
