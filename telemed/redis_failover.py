"""`telemed redis-failover`: move the Redis primary onto its replica under Sentinel, failing
no write and losing none (docs/deployment.md, Redis Sentinel).

A bare `SENTINEL FAILOVER` loses writes: the old primary acknowledges them until the
sentinels demote it, seconds later. `min-replicas-to-write` alone leaves an instant: a write
the old primary takes after its replica was promoted but before it saw the replica leave.
So writes are paused on the old primary while the replica catches up and is promoted, and
let go once the replica has left; from then on the old primary answers NOREPLICAS, which the
service's client takes as "ask the sentinels again". Writes wait for the pause (about a
tenth of a second when the sentinels answer at once), they do not fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from telemed.redis_client import parse_sentinel_url

__all__ = ["FailoverFailed", "Moved", "planned_failover"]

log = logging.getLogger("telemed.redis")

Address = tuple[str, int]
#: s between looks at replication state, which Redis announces to no plain client.
POLL = 0.02


class FailoverFailed(Exception):
    """The primary did not move; the message says why and what was left as it was."""


@dataclass(frozen=True)
class Moved:
    old: Address
    new: Address
    #: s the old primary held writes back.
    paused: float


def _address(found: Any) -> Address:
    """An address as redis-py's Sentinel gives it (loosely typed there)."""
    host, port = found
    return str(host.decode() if isinstance(host, bytes) else host), int(port)


async def _replication(node: aioredis.Redis) -> dict[str, object]:
    info: dict[str, object] = await node.info("replication")
    return info


async def _until(check: Callable[[], Awaitable[bool]], deadline: float, what: str) -> None:
    while not await check():
        if time.monotonic() > deadline:
            raise FailoverFailed(f"{what} did not happen in time")
        await asyncio.sleep(POLL)


async def planned_failover(url: str, *, timeout: float = 2.0, pause_cap: float = 2.0,
                           wait: float = 30.0) -> Moved:
    """Fail the primary of the `redis+sentinel://` `url` over to a replica. `pause_cap`
    bounds how long writes are held back should this process die midway; `wait` bounds
    the whole move. FailoverFailed when it cannot be done safely (no replica in sync, the
    sentinels refuse); ValueError for a URL that is not a Sentinel one."""
    target = parse_sentinel_url(url)
    deadline = time.monotonic() + wait
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout,
                         "password": target.sentinel_password})
    opened: list[aioredis.Redis] = []

    def node(address: Address) -> aioredis.Redis:
        client = aioredis.Redis(host=address[0], port=address[1], password=target.password,
                                socket_timeout=timeout, socket_connect_timeout=timeout)
        opened.append(client)
        return client

    try:
        old = _address(await sentinel.discover_master(target.service))
        primary = node(old)
        replicas = [node(_address(a)) for a in await sentinel.discover_slaves(target.service)]
        attached = int(str((await _replication(primary)).get("connected_slaves", 0)))
        if not replicas or attached < len(replicas):
            raise FailoverFailed(
                f"{len(replicas)} replica(s) known to the sentinels, {attached} attached to "
                f"the primary: a failover now could lose writes; nothing was changed")
        before = str((await primary.config_get("min-replicas-to-write"))[
            "min-replicas-to-write"])
        # Every replica counted: with two, the one not promoted would otherwise keep the
        # old primary accepting writes.
        await primary.config_set("min-replicas-to-write", attached)
        try:
            return await _move(sentinel, target.service, primary, replicas, old,
                               attached, pause_cap, deadline)
        finally:
            await primary.config_set("min-replicas-to-write", before)
    except RedisError as exc:
        raise FailoverFailed(f"Redis: {exc}") from exc
    finally:
        for client in opened:
            await client.aclose()
        await sentinel.aclose()


async def _ask_failover(sentinel: Sentinel, service: str) -> None:
    errors = []
    for one in sentinel.sentinels:
        try:
            await one.sentinel_failover(service)
            return
        except RedisError as exc:  # a sentinel down, or refusing (-INPROG, -NOGOODSLAVE)
            errors.append(str(exc))
    raise FailoverFailed(f"no sentinel started the failover: {'; '.join(errors)}")


async def _move(sentinel: Sentinel, service: str, primary: aioredis.Redis,
                replicas: list[aioredis.Redis], old: Address, attached: int,
                pause_cap: float, deadline: float) -> Moved:
    async def caught_up() -> bool:
        offset = int(str((await _replication(primary))["master_repl_offset"]))
        done = [int(str((await _replication(r)).get("slave_repl_offset", -1))) >= offset
                for r in replicas]
        return all(done)

    async def replica_left() -> bool:
        info = await _replication(primary)
        return info.get("role") != "master" or int(str(info["connected_slaves"])) < attached

    async def moved() -> Address | None:
        named = _address(await sentinel.discover_master(service))
        return None if named == old else named

    async def demoted() -> bool:
        info = await _replication(primary)
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    started = time.monotonic()
    await primary.execute_command(  # type: ignore[no-untyped-call]  # untyped in redis-py
        "CLIENT", "PAUSE", int(pause_cap * 1000), "WRITE")
    try:
        await _until(caught_up, deadline, "the replicas catching up")
        await _ask_failover(sentinel, service)
        await _until(replica_left, deadline, "a replica's promotion")
    finally:
        await primary.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    paused = time.monotonic() - started
    if paused >= pause_cap:
        log.warning("! writes were let go after %.2f s, before the replica had left: the "
                    "last of them may be lost", paused)
    new: Address | None = None

    async def announced() -> bool:
        nonlocal new
        new = await moved()
        return new is not None

    await _until(announced, deadline, "the sentinels naming the new primary")
    assert new is not None
    # min-replicas-to-write goes back once the old primary follows the new one: until
    # then it is a primary a stale client could still write to.
    await _until(demoted, deadline, "the old primary following the new one")
    log.info("= Redis primary moved from %s:%d to %s:%d; writes waited %.2f s",
             *old, *new, paused)
    return Moved(old, new, paused)
