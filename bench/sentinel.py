"""Redis behind Sentinel: what a failover costs a writer, and what following the sentinels
costs when nothing fails. Real redis-server primary and replica and three real sentinels,
started by the benchmark (tests/services.py).

- failover: the primary SIGKILLed while a client made by `telemed.redis_client.connect`
  writes; seconds from the kill to the first write that succeeds (the write issued right
  after the kill, which waits for the promoted replica), for the sentinels'
  down-after-milliseconds of the tests (500) and of compose (3000).
- steady state: INCRs per second through our sentinel client against the same primary
  reached directly (redis://, the baseline) and through redis-py's own Sentinel client,
  same process, same concurrency: what following the sentinels costs, and what our
  additions (the 0.5 s primary check, the failover retries) cost on top.

    python -m bench.sentinel [--runs 3] [--ops 20000] [--concurrency 20]
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from bench.common import args, pct, report
from telemed.redis_client import connect
from tests.services import SentinelGroup, run_sentinel_group


async def first_write_after_kill(group: SentinelGroup) -> float:
    client = connect(group.url, timeout=2.0, failover_wait=60.0)
    try:
        await client.set("warm", "1")
        killed = time.monotonic()
        group.servers[group.first_primary].send_signal(signal.SIGKILL)
        await client.incr("after-kill")
        return time.monotonic() - killed
    finally:
        await client.aclose()


async def rate(client: aioredis.Redis, ops: int, concurrency: int) -> float:
    async def worker(share: int) -> None:
        for _ in range(share):
            await client.incr("steady")

    start = time.perf_counter()
    await asyncio.gather(*(worker(ops // concurrency) for _ in range(concurrency)))
    return (ops // concurrency * concurrency) / (time.perf_counter() - start)


async def steady(group: SentinelGroup, ops: int, concurrency: int) -> dict[str, float]:
    clients = {
        "direct": connect(f"redis://127.0.0.1:{group.first_primary}/0", timeout=2.0),
        "redis_py_sentinel": Sentinel(  # type: ignore[no-untyped-call]
            [("127.0.0.1", p) for p in group.sentinel_ports], socket_timeout=2.0,
        ).master_for(group.service, socket_timeout=2.0),
        "ours": connect(group.url, timeout=2.0),
    }
    rates: dict[str, list[float]] = {name: [] for name in clients}
    try:
        # Alternated, best of three each: the machine is shared, its noise hits all alike.
        for _ in range(3):
            for name, client in clients.items():
                rates[name].append(await rate(client, ops, concurrency))
    finally:
        for client in clients.values():
            await client.aclose()
    best = {name: max(values) for name, values in rates.items()}
    return {"baseline_direct_incr_per_s": best["direct"],
            "redis_py_sentinel_incr_per_s": best["redis_py_sentinel"],
            "ours_incr_per_s": best["ours"],
            "ours_ratio_to_direct": best["ours"] / best["direct"],
            "ours_ratio_to_redis_py_sentinel": best["ours"] / best["redis_py_sentinel"]}


def main() -> None:
    opts = args(__doc__ or "", runs=3, ops=20000, concurrency=20)
    settings = (500,) if opts.smoke else (500, 3000)
    runs, ops = (1, 2000) if opts.smoke else (opts.runs, opts.ops)
    figures: dict[str, Any] = {"runs": runs, "ops": ops, "concurrency": opts.concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        with run_sentinel_group(Path(tmp) / "steady") as group:
            figures.update(asyncio.run(steady(group, ops, opts.concurrency)))
        for down_after in settings:
            seconds = []
            for n in range(runs):
                with run_sentinel_group(Path(tmp) / f"kill-{down_after}-{n}",
                                        down_after_ms=down_after) as group:
                    seconds.append(asyncio.run(first_write_after_kill(group)))
            figures[f"down_after_{down_after}ms_first_write_p50_s"] = pct(seconds, 50)
            figures[f"down_after_{down_after}ms_first_write_max_s"] = max(seconds)
    report("sentinel", figures)


if __name__ == "__main__":
    main()
