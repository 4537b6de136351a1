"""TURN leases per second through the Redis-backed pool, per provider, against a real
`redis-server` this benchmark starts. Baseline: bare Redis round trips (PING) per second
from the same client, the floor every lease pays several times.

    python -m bench.turn_leases [--leases 2000] [--concurrency 20]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench.common import args, report
from tests.services import run_redis
from turn.pool import TurnPool
from turn.providers.coturn import CoturnRedisUserDb, CoturnSharedSecret
from turn.providers.return_users import ReturnUsersFile


async def rate(n: int, concurrency: int, op: object) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await op(i)  # type: ignore[operator]

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


async def run(url: str, n: int, concurrency: int, folder: Path) -> dict[str, float]:
    redis = aioredis.Redis.from_url(url)
    figures: dict[str, float] = {}
    figures["baseline_redis_pings_per_s"] = await rate(n, concurrency, lambda i: redis.ping())
    providers = {
        "coturn_secret": CoturnSharedSecret(("s" * 32,), ("turn:127.0.0.1:3478",)),
        "coturn_redis": CoturnRedisUserDb(redis, "bench", ("turn:127.0.0.1:3478",)),
        "return_file": ReturnUsersFile(folder / "users.txt", "bench", ("turn:x",), size=n),
    }
    for name, provider in providers.items():
        pool = TurnPool(redis, provider, size=n, ttl=600, namespace=f"bench-{name}")

        async def lease_and_return(i: int, pool: TurnPool = pool) -> None:
            lease = await pool.lease(f"call-{i}", "p")
            await pool.release(lease)

        figures[f"{name}_leases_per_s"] = await rate(n, concurrency, lease_and_return)
        figures[f"{name}_ratio_to_pings"] = (figures[f"{name}_leases_per_s"]
                                             / figures["baseline_redis_pings_per_s"])
    await redis.aclose()
    return figures


def main() -> None:
    opts = args(__doc__ or "", leases=2000, concurrency=20)
    n = 100 if opts.smoke else opts.leases
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp) / "redis") as server:
        figures = asyncio.run(run(server.url, n, opts.concurrency, Path(tmp)))
    report("turn_leases", {"leases": n, "concurrency": opts.concurrency, **figures})


if __name__ == "__main__":
    main()
