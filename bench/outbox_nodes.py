"""Webhook deliveries per second to one endpoint with 1, 2 and 3 outbox "nodes" (Outbox
instances, each with its own Redis connection, in this process) sharing one real
`redis-server`, to a receiver on loopback. Baseline, same run: bare signed POSTs to the
same receiver one after another, the floor of a queue delivered one event at a time.

    python -m bench.outbox_nodes [--events 1000]

Each endpoint's queue is delivered in order, one event at a time whichever node holds
its head, so more nodes are not expected to deliver faster: this measures what the claim,
the renewal and the booking cost, and that extra nodes cost little.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bench.common import args, report
from mis.webhooks import PREFIX, Endpoint, Outbox, sign
from tests.services import run_redis
from tests.webhook_receiver import Receiver, run_receiver

SECRET = "bench-secret-" + "b" * 20


async def bare_posts(url: str, n: int) -> float:
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        for i in range(n):
            body = b'{"id":"%d","event":"call.created","data":{"call":{"id":"c"}}}' % i
            async with http.post(url, data=body, headers={
                    "X-Telemed-Event-Id": str(i),
                    "X-Telemed-Signature": sign(SECRET, body, time.time())}) as r:
                assert r.status == 204
        return n / (time.perf_counter() - start)


async def with_nodes(redis_url: str, receiver: Receiver, nodes: int, n: int) -> float:
    url = receiver.url
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(nodes)]
    await clients[0].flushdb()
    outboxes = [Outbox(c, [Endpoint(url)], SECRET, claim_timeout=5.0) for c in clients]
    for i in range(n):  # queued before any node delivers: the drain is what is timed
        await outboxes[i % nodes].publish("call.created", {"call": {"id": f"c{i % 50}"}})
    queue = f"{PREFIX}queue:{Endpoint(url).key}"
    start = time.perf_counter()
    for outbox in outboxes:
        outbox.start()
    async with receiver._arrived:
        await receiver._arrived.wait_for(
            lambda: len({e["id"] for e in receiver.received}) >= n)
    rate = n / (time.perf_counter() - start)
    for outbox in outboxes:
        await outbox.close()
    assert await clients[0].zcard(queue) == 0  # every delivery booked too
    for client in clients:
        await client.aclose()
    return rate


async def run(n: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp)) as server:
        async with run_receiver(SECRET) as receiver:
            figures["baseline_bare_posts_per_s"] = await bare_posts(receiver.url, n)
            for nodes in (1, 2, 3):
                receiver.received.clear()
                rate = await with_nodes(server.url, receiver, nodes, n)
                ids = [e["id"] for e in receiver.received]
                figures[f"nodes_{nodes}_deliveries_per_s"] = rate
                figures[f"nodes_{nodes}_duplicates"] = len(ids) - len(set(ids))
                figures[f"nodes_{nodes}_ratio_to_bare"] = rate / figures[
                    "baseline_bare_posts_per_s"]
    return figures


def main() -> None:
    opts = args(__doc__ or "", events=1000)
    n = 100 if opts.smoke else opts.events
    report("outbox_nodes", {"events": n, **asyncio.run(run(n))})


if __name__ == "__main__":
    main()
