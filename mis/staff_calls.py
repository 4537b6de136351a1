"""Per-person index of open calls for doctors and consultants, in Redis.

`telemed:calls:staff:<participant id>` is a set of call ids, written in the same transaction
as the call's summary (`CallStore`), from the summary as stored, so every node that records
a call keeps it current and a write refused by the fence changes nothing.
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


#: The person sets made to agree with the summary as stored: after a fenced write, the
#: owner's summary, not the refused one (a stale node failing its copy of a call must not
#: take the owner's open call off the workstations). KEYS: the summary. ARGV: the prefix,
#: the call's id.
_SYNC = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, snap = pcall(cjson.decode, raw)
if not ok or type(snap) ~= 'table' then return 0 end
local open = snap.state ~= 'ended' and snap.state ~= 'failed'
for _, p in ipairs(snap.participants or {}) do
  if p.role == 'doctor' or p.role == 'consultant' then
    local key = ARGV[1] .. 'staff:' .. p.id
    if open and p.removed ~= true then
      redis.call('SADD', key, ARGV[2])
    else
      redis.call('SREM', key, ARGV[2])
    end
  end
end
return 1
"""


def queue_staff_index(tx: Any, call_id: str) -> None:
    """Queues, in the caller's transaction and after its (fenced) write of the summary, the
    index writes that summary calls for."""
    tx.eval(_SYNC, 1, f"{PREFIX}{call_id}", PREFIX, call_id)


async def open_calls_of(redis: aioredis.Redis, subject: str) -> list[dict[str, Any]]:
    """The stored summaries of the open calls `subject` takes part in as staff (any order)."""
    # A marker read per call is cheaper than the script's SMEMBERS of every open call.
    if not await redis.exists(BACKFILLED):
        await redis.eval(_BACKFILL, 2, f"{PREFIX}open", BACKFILLED, PREFIX)
    found = await redis.eval(_OPEN, 1, f"{PREFIX}staff:{subject}", subject, PREFIX)
    return [json.loads(raw) for raw in found]
