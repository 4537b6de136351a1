"""Participants who join at the same moment, over real WebSockets, with TURN leases taken
from a real coturn-secret pool in real Redis and the embedded media server behind the hub
(issue #20: half of all simultaneous joins used to get `internal`, and the refused one was
left half-registered, holding its lease)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from signaling.call import CallKind, CallState
from tests.helpers import poll_until, wait_until
from tests.hub_fixtures import CallClient, Service, clients_for, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer, TurnServer

ROUNDS = 50


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer,
                  turn_server: TurnServer) -> AsyncIterator[Service]:
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "16",
           "TELEMED_TURN_URLS": turn_server.url, "TELEMED_TURN_SECRETS": turn_server.secret}
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,), env=env,
                        turn_urls=(turn_server.url,),
                        turn_secrets=(turn_server.secret,)) as svc:
        yield svc


async def leases(service: Service) -> int:
    assert service.hub.turn is not None
    return await service.hub.turn.in_use()


async def join_together(clients: list[CallClient]) -> list[dict[str, Any]]:
    """Every client's `join` frame written in one loop turn, then every reply."""
    replies: list[asyncio.Future[dict[str, Any]]] = []
    loop = asyncio.get_running_loop()
    for n, client in enumerate(clients):
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        client._replies[10_000 + n] = future
        replies.append(future)
    # send_str only queues on the transport until drained: no await between the writes.
    sends = [c.send_raw(json.dumps({"type": "join", "id": 10_000 + n}))
             for n, c in enumerate(clients)]
    await asyncio.gather(*sends)
    return list(await asyncio.wait_for(asyncio.gather(*replies), 20))


@pytest.mark.parametrize("size", [2, 8])
async def test_joins_sent_together_all_get_in_and_every_lease_comes_back(
        service: Service, size: int) -> None:
    """`size` participants send `join` in the same loop turn, 50 times over: every one is
    `joined` (never `internal` or another error), each holds a TURN lease of its own in
    Redis, and once the call ends every lease is back in the pool."""
    before = await leases(service)
    kind = CallKind.CONFERENCE if size > 2 else CallKind.CONSULTATION
    roles = ["patient"] + ["doctor"] * (size - 1) if size == 2 else ["doctor"] * size
    for _ in range(ROUNDS):
        call = service.hub.create_call(
            kind, [(f"p{i}", f"P{i}", role) for i, role in enumerate(roles)])
        clients = list(clients_for(service, call).values())
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            await asyncio.gather(*(c.hello() for c in clients))
            replies = await join_together(clients)
            assert [r["type"] for r in replies] == ["joined"] * size, replies
            assert call.state is CallState.CONNECTING
            assert await leases(service) == before + size
            assert {r["you"]["id"] for r in replies} == set(call.participants)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        await service.hub.end(call.id)
        await wait_until(lambda ended=call.id: ended not in service.hub.sessions)

        async def returned() -> bool:
            return await leases(service) == before

        await poll_until(returned, what="every TURN lease back in the pool")
