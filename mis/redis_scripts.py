"""The call history's Lua scripts for Redis (`mis.history.CallStore`): each runs at once,
so several signalling processes may append to and read one call's timeline."""

from __future__ import annotations

__all__ = ["APPEND", "FENCED_SET", "OWNER", "READ"]

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
