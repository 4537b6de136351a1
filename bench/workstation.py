"""The workstation's read of a doctor's open calls from Redis, with many open calls booked.

A real redis-server holds `--calls` open calls (summaries written by `CallStore`, so the
per-person index is written as the service writes it), spread over `--doctors` doctors.
Measured, same process, same Redis, one read at a time:

- index: `mis.staff_calls.open_calls_of` (the person's set and their summaries, one script);
- scan (the baseline): the same answer from the set of all open calls, filtered in one Lua
  script, which is what the page would cost without the index;
- get: one plain GET of a summary, the floor of any Redis round trip.

And the write side: `CallStore.save_many` of the calls, whose transaction now also writes
the index, per call.

    python -m bench.workstation [--calls 5000] [--doctors 250] [--reads 400]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import bench_main, pct
from mis.history import CallStore
from mis.staff_calls import open_calls_of

# The same test as the index's read, over every open call: the cost the index avoids.
SCAN = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[2] .. id)
  if raw then
    local snap = cjson.decode(raw)
    for _, p in ipairs(snap.participants) do
      if p.id == ARGV[1] and p.removed ~= true then out[#out + 1] = raw end
    end
  end
end
return out
"""


def summary(call_id: str, doctor: str, now: float) -> dict[str, Any]:
    """A booked consultation's summary, shaped as `mis.history.summary` writes it."""
    return {
        "id": call_id, "kind": "consultation", "state": "created", "failure": None,
        "failureDetail": None, "mediaServer": None, "mediaPipeline": None, "node": "bench",
        "epoch": None, "createdAt": now, "metadata": {"subject": "follow-up visit"},
        "participants": [
            {"id": f"pat-{call_id[:8]}", "name": "Patient Name", "role": "patient",
             "state": "invited", "published": []},
            {"id": doctor, "name": "Dr. Name", "role": "doctor", "state": "invited",
             "published": []}],
        "schedule": {"start": now + 3600, "end": now + 5400}, "maxParticipants": 2,
        "liveAt": None, "endedAt": None, "duration": None, "joins": [], "networks": {},
        "timelineSeq": 0, "clientEventsDropped": 0,
    }


async def timed(reads: int, op: Any) -> list[float]:
    out = []
    for n in range(reads):
        start = time.perf_counter()
        await op(n)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def run(opts: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(redis_url)
    store = CallStore(redis)
    doctors = [f"doc-{n}" for n in range(opts.doctors)]
    now = time.time()
    snaps = [summary(uuid.uuid4().hex, doctors[n % opts.doctors], now + n)
             for n in range(opts.calls)]
    start = time.perf_counter()
    for at in range(0, len(snaps), 100):
        await store.save_many([(s, 0, []) for s in snaps[at:at + 100]])
    write_ms = (time.perf_counter() - start) * 1000 / len(snaps)
    per = len(await open_calls_of(redis, doctors[0]))
    scan = redis.register_script(SCAN)
    index_ms = await timed(opts.reads, lambda n: open_calls_of(redis, doctors[n % len(doctors)]))
    scan_ms = await timed(opts.reads, lambda n: scan(
        keys=["telemed:calls:open"], args=[doctors[n % len(doctors)], "telemed:calls:"]))
    get_ms = await timed(opts.reads, lambda n: redis.get(f"telemed:calls:{snaps[n]['id']}"))
    await redis.aclose()
    return {
        "open_calls": opts.calls, "doctors": opts.doctors, "calls_per_doctor": per,
        "write_ms_per_call": write_ms,
        "index_read_p50_ms": pct(index_ms, 50), "index_read_p99_ms": pct(index_ms, 99),
        "scan_read_p50_ms": pct(scan_ms, 50), "scan_read_p99_ms": pct(scan_ms, 99),
        "get_p50_ms": pct(get_ms, 50),
        "index_ratio_to_scan": pct(index_ms, 50) / pct(scan_ms, 50),
        "index_ratio_to_get": pct(index_ms, 50) / pct(get_ms, 50),
    }


def measure(opts: argparse.Namespace, redis_url: str, tmp: Path) -> dict[str, Any]:
    return asyncio.run(run(opts, redis_url))


if __name__ == "__main__":
    bench_main("workstation", __doc__ or "", measure, None,
               {"calls": 300, "doctors": 30, "reads": 40},
               calls=5000, doctors=250, reads=400)
