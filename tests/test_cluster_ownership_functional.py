"""Call ownership between nodes, against a real redis-server: one claim wins, a dead
node's calls can be claimed and the epoch fences the old owner out, a lease that lapsed
(a freeze) is noticed, and the history refuses a summary written under an old epoch."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.node import Cluster
from cluster.ownership import NodeLease, Ownership
from mis.history import CallStore
from signaling.session import SessionConfig
from tests.call_fakes import make_hub


class Clock:
    """Monotonic time a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node(redis: Any, name: str, clock: Clock | None = None) -> Ownership:
    return Ownership(redis, NodeLease(redis, name, ttl=5, clock=clock or Clock()))


async def test_two_nodes_claiming_one_call_in_the_same_loop_turn_agree_on_one_owner(
    redis_client: Any,
) -> None:
    """Both claim at once: one gets the call with epoch 1, the other is told who has it."""
    a, b = node(redis_client, "node-a"), node(redis_client, "node-b")
    await asyncio.gather(a.lease.beat(), b.lease.beat())
    results = await asyncio.gather(a.claim("c1"), b.claim("c1"))
    winners = [r for r in results if r[1] is not None]
    assert len(winners) == 1 and winners[0][1] == 1
    owner = winners[0][0]
    assert all(r[0] == owner for r in results)
    assert await a.owner("c1") == (owner, 1)
    assert (owner == "node-a") == a.holds("c1") and (owner == "node-b") == b.holds("c1")


async def test_a_dead_nodes_call_is_claimed_with_a_new_epoch_and_the_old_owner_sees_it_lost(
    redis_client: Any,
) -> None:
    """Node A's key expires (it died or froze): B claims A's call under epoch 2, the call
    moves to B's list, A is listed dead while it holds calls, and A's `lost` names it."""
    a, b = node(redis_client, "node-a"), node(redis_client, "node-b")
    await a.lease.beat()
    await b.lease.beat()
    assert await a.claim("c1") == ("node-a", 1)
    assert await b.claim("c1") == ("node-a", None)  # A lives: B may not take it
    await redis_client.delete("telemed:nodes:node-a")  # as its TTL would
    assert await b.dead_nodes() == ["node-a"]
    assert await b.calls_of("node-a") == ["c1"]
    assert await b.claim("c1") == ("node-b", 2)
    assert await b.calls_of("node-a") == []
    assert await b.calls_of("node-b") == ["c1"]
    assert await a.lost() == ["c1"]
    assert not a.holds("c1")
    assert await b.lost() == []


async def test_a_summary_written_under_an_old_epoch_is_refused(redis_client: Any) -> None:
    """The history keeps the new owner's summary: the old owner's later write (epoch 1)
    is refused and reported, the new owner's (epoch 2) and an unowned call's go in."""
    store = CallStore(redis_client)
    a, b = node(redis_client, "node-a"), node(redis_client, "node-b")
    await b.lease.beat()
    await a.claim("c1")
    await b.claim("c1")  # A never beat: not alive, so B takes it under epoch 2
    now = time.time()

    def snap(state: str, owner: str, epoch: int | None, call_id: str = "c1") -> dict[str, Any]:
        return {"id": call_id, "kind": "consultation", "state": state, "node": owner,
                "epoch": epoch, "createdAt": now, "participants": []}

    assert await store.save_many([(snap("live", "node-b", 2), 0, [])]) == set()
    refused = await store.save_many([(snap("failed", "node-a", 1), 0, []),
                                     (snap("created", "x", None, "c2"), 0, [])])
    assert refused == {"c1"}
    stored = await store.get("c1")
    assert stored is not None and stored["state"] == "live" and stored["node"] == "node-b"
    assert (await store.get("c2")) is not None


async def test_a_lease_that_lapsed_is_in_doubt_until_the_calls_are_checked(
    redis_client: Any,
) -> None:
    """Valid after a beat; in doubt once 80% of the TTL passed without one (frozen); the
    next beat finds its key gone, runs the check before trusting itself again."""
    clock = Clock()
    lease = NodeLease(redis_client, "node-a", ttl=5, clock=clock)
    checked: list[bool] = []

    async def on_lapse() -> None:
        checked.append(lease.valid())

    lease.on_lapse = on_lapse
    await lease.beat()
    assert lease.valid()
    clock.now += 3.9
    assert lease.valid()
    clock.now += 0.2
    assert not lease.valid()
    await redis_client.delete("telemed:nodes:node-a")  # the TTL ran out meanwhile
    await lease.beat()
    assert checked == [False]  # checked while still in doubt
    assert lease.valid()
    await lease.beat()
    assert checked == [False]  # a beat on time checks nothing


async def test_a_finished_calls_owner_record_stays_to_fence_and_leaves_the_nodes_list(
    redis_client: Any,
) -> None:
    """Released by its holder, the owner record gets a TTL (late writers stay fenced) and
    the call leaves the node's list; a release by a node that lost it changes nothing."""
    a, b = node(redis_client, "node-a"), node(redis_client, "node-b")
    await a.claim("c1")
    await b.claim("c1")  # A never beat: B takes it
    await a.release("c1")  # A does not hold it any more (it thinks it does)
    assert await redis_client.ttl("telemed:owner:c1") == -1
    await b.release("c1")
    assert 0 < await redis_client.ttl("telemed:owner:c1") <= 86400
    assert await b.calls_of("node-b") == []
    assert await b.owner("c1") == ("node-b", 2)


async def test_a_dead_nodes_calls_are_adopted_side_by_side(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls of a node that is gone are placed (claimed and taken over) at the same
    time, not one after the other: each placement here waits until all three are under
    way, which adoption one by one would never reach. The takeover itself is replaced;
    tests/test_nodes_functional.py adopts real calls."""
    hub, _ = make_hub(tmp_path)
    config = SessionConfig(jwt_keys=["k"], issuer="i", audience="a", allowed_origins=set())
    cluster = Cluster(redis_client, hub, CallStore(redis_client), config, ttl=5)
    dead = node(redis_client, "node-dead")
    await dead.lease.beat()
    for call_id in ("c1", "c2", "c3"):
        await dead.claim(call_id)
    await redis_client.delete("telemed:nodes:node-dead")  # its lease ran out
    under_way: list[str] = []
    all_started = asyncio.Event()

    async def place(call_id: str) -> str:
        under_way.append(call_id)
        if len(under_way) == 3:
            all_started.set()
        await asyncio.wait_for(all_started.wait(), 5)
        return cluster.node_id

    monkeypatch.setattr(cluster, "place", place)
    assert sorted(await cluster.adopt_dead()) == ["c1", "c2", "c3"]
