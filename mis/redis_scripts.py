"""Lua scripts for Redis: the call history's (`mis.history.CallStore`) and the webhook
outbox's (`mis.webhooks.Outbox`). Each runs at once, so several signalling processes may
append to and read one call's timeline, and claim and book one delivery."""

from __future__ import annotations

__all__ = ["APPEND", "FENCED_SET", "OPEN_SYNC", "OUTBOX_BOOK", "OUTBOX_CLAIM", "OUTBOX_RENEW",
           "OWNER", "READ"]

#: Appends numbered timeline entries once each, whoever sends them and however often (a
#: journal replayed after a crash sends some again), and keeps the last ARGV[1].
#: KEYS: the call's entry list, its next-number counter. ARGV: limit, first number, entries.
APPEND = """
local have = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = tonumber(ARGV[2])
for i = 3, #ARGV do
  local n = first + i - 3
  if n >= have then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    have = n + 1
  end
end
redis.call('SET', KEYS[2], have)
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
return have
"""


#: The summary, the number of entries kept and written, the number of the page's first
#: entry and the page, read at one moment. ARGV: first number wanted (-1: the oldest
#: kept), entries wanted (-1: all).
READ = """
local raw = redis.call('GET', KEYS[1])
if not raw then return nil end
local length = redis.call('LLEN', KEYS[2])
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local oldest = seq - length
local first = oldest
local start = tonumber(ARGV[1])
if start >= 0 then first = math.min(math.max(start, oldest), seq) end
local stop = -1
local limit = tonumber(ARGV[2])
if limit >= 0 then stop = first - oldest + limit - 1 end
return {raw, length, seq, first, redis.call('LRANGE', KEYS[2], first - oldest, stop)}
"""

#: Which node owns a call, under which epoch (`cluster.ownership` claims it).
OWNER = "telemed:owner:"

# The summary, unless the call's owner record has moved past the epoch it was written
# under (a node that froze and woke up after another adopted the call): 1 written, 0 not.
FENCED_SET = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch and ARGV[2] ~= '' and tonumber(epoch) > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


#: Claims the head of an endpoint's webhook queue for one delivery, if nobody holds it and
#: it is not waiting out a retry delay. KEYS: the queue, its state hash. ARGV: now, lease
#: (s), this delivery's token, the prefix of event keys (the head is only known in here;
#: one Redis, not a cluster, so an undeclared key is fine).
#: Returns {0} empty; {1, seconds} busy or backing off; {2} head expired and dropped;
#: {3, id, attempts so far, body} claimed.
OUTBOX_CLAIM = """
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
if #head == 0 then return {0} end
local id = head[1]
local now = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[2], 'event', 'token', 'until', 'attempts', 'not_before')
local attempts = 0
if st[1] == id then
  attempts = tonumber(st[4] or '0')
  local busy = tonumber(st[5] or '0')
  if st[2] then busy = math.max(busy, tonumber(st[3] or '0')) end
  if busy > now then return {1, tostring(busy - now)} end
end
local body = redis.call('GET', ARGV[4] .. id)
redis.call('DEL', KEYS[2])
if not body then
  redis.call('ZREM', KEYS[1], id)
  return {2}
end
redis.call('HSET', KEYS[2], 'event', id, 'token', ARGV[3],
           'until', tostring(now + tonumber(ARGV[2])), 'attempts', attempts)
return {3, id, attempts, body}
"""

#: Extends a delivery's claim while its request is in flight, if it still holds it.
#: KEYS: the state hash. ARGV: token, new expiry. Returns 1, or 0 when the claim is lost.
OUTBOX_RENEW = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'until', ARGV[2])
return 1
"""

#: Books a delivery's outcome only if its claim still holds: a node that lost it while
#: frozen must not undo the new claimer's work. KEYS: state, queue, the event's log.
#: ARGV: token, event id, log record, '1' delivered / '0' failed, attempts, retry time,
#: log length kept, log TTL, log record if the claim is lost (the attempt still happened).
#: Returns 1 booked, 0 claim lost (only the log written).
OUTBOX_BOOK = """
local held = redis.call('HGET', KEYS[1], 'token') == ARGV[1]
redis.call('RPUSH', KEYS[3], held and ARGV[3] or ARGV[9])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[7]), -1)
redis.call('EXPIRE', KEYS[3], ARGV[8])
if not held then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[1], 'event', ARGV[2], 'attempts', ARGV[5], 'not_before', ARGV[6])
end
return 1
"""


#: The set of open calls made to agree with the summary as stored: after a fenced write,
#: the owner's summary, not a refused one (a stale node's `failed` must not take the
#: owner's running call out of the set the expiry round and the listings read).
#: KEYS: the summary, the open set. ARGV: the call's id.
OPEN_SYNC = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, snap = pcall(cjson.decode, raw)
if not ok or type(snap) ~= 'table' then return 0 end
if snap.state == 'ended' or snap.state == 'failed' then
  redis.call('SREM', KEYS[2], ARGV[1])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
"""
