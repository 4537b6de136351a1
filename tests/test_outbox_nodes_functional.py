"""The webhook outbox on several nodes sharing one real redis-server, delivering to a real
receiver on loopback: each event once, each call's events in order, and a node that lost
its claim while stuck cannot book over the node that took the delivery over."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from mis.webhooks import PREFIX, Endpoint, Outbox
from tests.helpers import within
from tests.services import RedisServer
from tests.webhook_receiver import run_receiver

SECRET = "hook-secret-" + "n" * 20
ROOT = Path(__file__).resolve().parent.parent


async def test_three_node_processes_deliver_each_event_once_and_each_call_in_order(
    redis_server: RedisServer, redis_client: Any
) -> None:
    """Three outbox processes publish 12 calls' events and deliver them concurrently to a
    receiver that fails every fourth request: every id arrives once, each call in order."""
    from tests.outbox_node import EVENTS_PER_CALL

    calls = [f"call-{i}" for i in range(12)]

    async def flaky(attempt: int, event_id: str) -> int | None:
        return 500 if attempt % 4 == 0 else None

    async with run_receiver(SECRET) as receiver:
        receiver.before = flaky
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        nodes = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.outbox_node", redis_server.url, receiver.url,
            SECRET, "5", *calls[i::3], env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE) for i in range(3)]
        try:
            for node in nodes:
                assert node.stdout is not None
                line = await within(node.stdout.readline(), 30, "a node's publishing")
                assert line == b"published\n", line
            total = len(calls) * EVENTS_PER_CALL
            async with receiver._arrived:
                await within(receiver._arrived.wait_for(
                    lambda: len(receiver.received) >= total), 60, f"{total} deliveries")
        finally:
            for node in nodes:
                assert node.stdin is not None
                node.stdin.close()
            codes = [await within(node.wait(), 20, "a node's stop") for node in nodes]
        assert codes == [0, 0, 0]
        ids = [e["id"] for e in receiver.received]
        assert len(ids) == len(set(ids)) == total, (len(ids), len(set(ids)))
        order: dict[str, list[int]] = defaultdict(list)
        for e in receiver.received:
            order[e["data"]["call"]["id"]].append(e["data"]["n"])
        assert order == {c: list(range(EVENTS_PER_CALL)) for c in calls}
        assert receiver.attempts > total  # the failures happened and were retried
        assert await redis_client.zcard(f"{PREFIX}queue:{Endpoint(receiver.url).key}") == 0


def booked(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once the outbox's booking script has answered (the real script runs)."""
    done = asyncio.Event()
    script = outbox._book

    async def book(**kwargs: Any) -> Any:
        result = await script(**kwargs)
        done.set()
        return result

    monkeypatch.setattr(outbox, "_book", book)
    return done


async def test_a_node_whose_claim_ran_out_while_stuck_cannot_book_over_the_next(
    redis_server: RedisServer, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A's request hangs past its claim; node B claims and sends the event; A's late
    failure is not booked (B's claim stands), B's success is, and the event arrives once."""
    answer: dict[int, asyncio.Future[int | None]] = {}
    seen: dict[int, asyncio.Event] = {1: asyncio.Event(), 2: asyncio.Event()}

    async def held(attempt: int, event_id: str) -> int | None:
        answer[attempt] = asyncio.get_running_loop().create_future()
        seen[attempt].set()
        return await answer[attempt]

    def clock(at: float) -> Callable[[], float]:
        return lambda: at

    async with run_receiver(SECRET) as receiver:
        receiver.before = held
        endpoint = Endpoint(receiver.url)
        state = f"{PREFIX}state:{endpoint.key}"
        a_redis = aioredis.Redis.from_url(redis_server.url)
        b_redis = aioredis.Redis.from_url(redis_server.url)
        # B lives 100 s after A (the receiver allows 300 s): A's 10 s claim ran out for B.
        t0 = float(int(time.time()))
        a = Outbox(a_redis, [endpoint], SECRET, claim_timeout=10.0, clock=clock(t0))
        b = Outbox(b_redis, [endpoint], SECRET, claim_timeout=10.0, clock=clock(t0 + 100))
        a_booked, b_booked = booked(a, monkeypatch), booked(b, monkeypatch)
        try:
            event_id = await a.publish("call.created", {"call": {"id": "c1"}})
            a.start()
            await within(seen[1].wait(), 10, "A's request")
            b.start()
            await within(seen[2].wait(), 10, "B's request")
            b_claim = await redis_client.hgetall(state)
            assert float(b_claim[b"until"]) == t0 + 110
            answer[1].set_result(500)  # A wakes up: its request failed

            await within(a_booked.wait(), 10, "A's booking")
            assert await redis_client.hgetall(state) == b_claim  # not booked over B
            answer[2].set_result(None)  # B's is taken
            await within(receiver.wait_for("call.created", "c1"), 10, "B's delivery")
            await within(b_booked.wait(), 10, "B's booking")
        finally:
            for pending in answer.values():  # a failed check must not leave them hanging
                if not pending.done():
                    pending.set_result(500)
            for outbox in (a, b):
                await outbox.close()
            await a_redis.aclose()
            await b_redis.aclose()
        deliveries = [json.loads(d) for d in
                      await redis_client.lrange(f"{PREFIX}log:{event_id}", 0, -1)]
        assert [(d["status"], d.get("claimLost", False)) for d in deliveries] == [
            (500, True), (204, False)]
        assert [e["id"] for e in receiver.received] == [event_id]
        assert not await redis_client.exists(state)
