"""Retention on several nodes sharing one real redis-server and one recordings volume:
one node purges at a time, under a lock that dies with its holder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from recordings.catalog import Catalog
from recordings.retention import LOCK, purge_alone
from tests.helpers import within
from tests.services import RedisServer

T0 = 1_700_000_000.0
LATER = T0 + 400 * 86400


async def old_recordings(catalog: Catalog, count: int) -> list[str]:
    """`count` calls' folders, each with one file and final metadata, a year before LATER."""
    calls = []
    for i in range(count):
        call_id = f"call-{i:03d}"
        folder = catalog.root / "2023" / "11" / "14" / call_id
        folder.mkdir(parents=True)
        (folder / "pat-1.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(64))
        await catalog.write(folder, {"call": call_id, "createdAt": T0 + i, "state": "ready",
                                     "files": [{"name": "pat-1.webm"}], "composed": None})
        calls.append(call_id)
    return calls


@pytest.fixture
async def nodes(redis_server: RedisServer, redis_client: Any, tmp_path: Path
                ) -> AsyncIterator[tuple[Catalog, Catalog]]:
    """Two nodes' catalogues: their own Redis connections, one Redis, one volume."""
    a = aioredis.Redis.from_url(redis_server.url)
    b = aioredis.Redis.from_url(redis_server.url)
    try:
        yield Catalog(tmp_path, a), Catalog(tmp_path, b)
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_nodes_starting_retention_together_purge_each_call_once(
    nodes: tuple[Catalog, Catalog]
) -> None:
    """Both nodes' hourly runs start at once: one purges every old call, the other skips."""
    a, b = nodes
    calls = await old_recordings(a, 20)
    done = await asyncio.gather(
        purge_alone(a, a.redis, older_than=LATER - 86400, now=LATER, by="node-a"),
        purge_alone(b, b.redis, older_than=LATER - 86400, now=LATER, by="node-b"))
    ran = [d for d in done if d is not None]
    assert len(ran) == 1, done
    assert sorted(c["call"] for c in ran[0]) == calls
    winner = "node-a" if done[0] is not None else "node-b"
    metas = [await a.get(c) for c in calls]
    assert all(m is not None and m["deleted"]["by"] == winner for m in metas)
    assert not list(a.root.glob("*/*/*/*/*.webm"))
    assert not await a.redis.exists(LOCK)  # released when done


async def test_a_node_skips_retention_while_another_is_purging_and_runs_after(
    nodes: tuple[Catalog, Catalog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A is held mid-purge: node B's run skips; the lock expires with its holder
    (TTL set); once A finishes B's next run finds nothing left and A's work intact."""
    a, b = nodes
    calls = await old_recordings(a, 5)
    inside, go_on = asyncio.Event(), asyncio.Event()
    write = a.write

    async def held_write(folder: Path, meta: dict[str, Any]) -> None:
        inside.set()
        await go_on.wait()
        await write(folder, meta)

    monkeypatch.setattr(a, "write", held_write)
    first = asyncio.create_task(purge_alone(a, a.redis, older_than=LATER - 86400, now=LATER,
                                            by="node-a", ttl=30.0))
    try:
        await within(inside.wait(), 10, "node A's first deletion")
        assert 0 < await b.redis.pttl(LOCK) <= 30_000  # a node that dies here frees it
        assert await purge_alone(b, b.redis, older_than=LATER - 86400, now=LATER,
                                 by="node-b") is None
    finally:
        go_on.set()
    done = await within(first, 10, "node A's purge")
    assert done is not None and sorted(c["call"] for c in done) == calls
    assert await purge_alone(b, b.redis, older_than=LATER - 86400, now=LATER,
                             by="node-b") == []
    metas = [await b.get(c) for c in calls]
    assert all(m is not None and m["deleted"]["by"] == "node-a" for m in metas)


async def test_a_node_that_loses_the_lock_midway_stops_and_leaves_the_new_holders_lock(
    nodes: tuple[Catalog, Catalog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A froze past its lock's TTL and node B took the lock: A's next renewal finds
    that, A stops purging (nothing more written) and does not release B's lock."""
    a, b = nodes
    await old_recordings(a, 3)
    inside = asyncio.Event()
    writes: list[str] = []
    write = a.write

    async def held_write(folder: Path, meta: dict[str, Any]) -> None:
        inside.set()
        await asyncio.Event().wait()  # frozen: only a cancellation gets it out
        writes.append(meta["call"])
        await write(folder, meta)

    monkeypatch.setattr(a, "write", held_write)
    first = asyncio.create_task(purge_alone(a, a.redis, older_than=LATER - 86400, now=LATER,
                                            by="node-a", ttl=0.3))
    await within(inside.wait(), 10, "node A's first deletion")
    await b.redis.set(LOCK, "node-b's token", px=30_000)  # A's ran out; B holds it now
    assert await within(first, 10, "node A giving up") is None
    assert writes == []
    assert await b.redis.get(LOCK) == b"node-b's token"
