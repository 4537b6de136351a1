"""One webhook outbox "node" as its own process, for tests of several nodes on one Redis.

`python -m tests.outbox_node REDIS_URL ENDPOINT_URL SECRET CLAIM_TIMEOUT CALL...`: delivers
to the endpoint, publishes EVENTS_PER_CALL events for each named call (round robin over
the calls, each call's events in order), prints `published`, and delivers until its stdin
closes; then stops as the service does (a delivery in flight is finished and booked).
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from mis.webhooks import Endpoint, Outbox

EVENTS_PER_CALL = 8


async def main(redis_url: str, url: str, secret: str, claim_timeout: float,
               calls: list[str]) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    outbox = Outbox(redis, [Endpoint(url)], secret, retry_base=0.01, retry_cap=0.05,
                    claim_timeout=claim_timeout)
    outbox.start()
    for n in range(EVENTS_PER_CALL):
        for call_id in calls:
            await outbox.publish("participant.joined", {"call": {"id": call_id}, "n": n})
    print("published", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the test closes it when done
    await outbox.close()
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]),
                     sys.argv[5:]))
