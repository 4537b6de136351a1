"""Recordings finalisation on several nodes sharing one real redis-server and one volume:
a call is finalized by one node; one that freezes mid-way (SIGSTOP, a separate process) is
taken over when its claim runs out, and writes nothing when it wakes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from recordings.catalog import Catalog, sha256_of
from recordings.claims import PREFIX
from recordings.worker import RecordingWorker
from tests.helpers import within
from tests.services import RedisServer
from tests.test_recordings_worker_functional import T0, Published, snapshot, webm

ROOT = Path(__file__).resolve().parent.parent


async def call_folder(root: Path, call_id: str, seconds: float) -> Path:
    folder = root / "2027" / "01" / "15" / call_id
    folder.mkdir(parents=True)
    await webm(folder / "pat-1.webm", seconds)
    return folder


@pytest.fixture
async def two_redis(redis_server: RedisServer, redis_client: Any
                    ) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    """Two nodes' own connections to one Redis (flushed by redis_client)."""
    a = aioredis.Redis.from_url(redis_server.url)
    b = aioredis.Redis.from_url(redis_server.url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_workers_given_the_same_call_finalize_it_once(
    tmp_path: Path, two_redis: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    """Both nodes' workers get the same ended call at once (one at its end, the other from
    its scan): one finalizes it, the other finds it done; its news is published once."""
    folder = await call_folder(tmp_path, "call-both", 2.0)
    published = Published()
    workers = [RecordingWorker(Catalog(tmp_path, r), published, claim_ttl=2.0)
               for r in two_redis]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.submit(folder, snapshot("call-both", T0 + 2.0))
        await within(asyncio.gather(*(w.wait("call-both") for w in workers)), 30,
                     "both workers' jobs")
    finally:
        for worker in workers:
            await worker.close()
    meta = Catalog.read(folder)
    assert meta is not None and meta["state"] == "ready", meta
    assert published.calls == 1, published.events  # one finalization published once
    assert not list(folder.glob(".*.part.webm"))
    assert not await two_redis[0].exists(PREFIX + "call-both")  # released


async def test_a_node_frozen_while_finalizing_is_taken_over_and_writes_nothing_after(
    tmp_path: Path, redis_server: RedisServer,
    two_redis: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    """Node A (a process) is SIGSTOPped mid-way (its first metadata written, composing);
    node B takes the call over once A's claim runs out and finalizes it; A, continued,
    sees it lost and writes and publishes nothing more."""
    folder = await call_folder(tmp_path, "call-frozen", 3.0)
    snap = snapshot("call-frozen", T0 + 3.0)
    redis = two_redis[1]
    await redis.config_set("notify-keyspace-events", "K$")
    pubsub = redis.pubsub()
    # Catalog.write indexes the metadata in Redis: its SET says A wrote the first of it.
    await pubsub.subscribe("__keyspace@0__:telemed:recordings:call-frozen")
    a = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.recordings_node", redis_server.url, str(tmp_path),
        str(folder), "1.0", json.dumps(snap), env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    published = Published()
    b = RecordingWorker(Catalog(tmp_path, redis), published, claim_ttl=1.0)
    try:
        async def first_write() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message" and message["data"] == b"set":
                    return

        await within(first_write(), 30, "node A's first metadata")
        os.kill(a.pid, signal.SIGSTOP)
        meta = Catalog.read(folder)
        assert meta is not None and meta["state"] == "composing", meta
        assert await redis.exists(PREFIX + "call-frozen")
        b.start()
        b.submit(folder, snap)
        await within(b.wait("call-frozen"), 30, "node B's takeover")
        final = Catalog.read(folder)
        assert final is not None and final["state"] == "ready", final
    finally:
        os.kill(a.pid, signal.SIGCONT)
        await b.close()
        await pubsub.aclose()
        await redis.config_set("notify-keyspace-events", "")
    out, _ = await within(a.communicate(), 30, "node A's end")
    # Lost at its next fence or renewal; or, after an error there, it looked again later
    # and found the call finalized. Either way it sent and wrote nothing.
    assert out.decode().split("\n")[-2] in ("lost", "done"), out
    assert b"published" not in out, out
    assert [e for e, _ in published.events.values()] == ["recording.ready"]
    assert Catalog.read(folder) == final  # A wrote nothing after waking
    composed = folder / "consultation.webm"
    assert sha256_of(composed) == final["composed"]["sha256"]  # not replaced by A's
    assert not list(folder.glob(".*.part.webm"))
