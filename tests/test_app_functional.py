"""healthz and readyz against a real Redis and media servers that are up or down."""

from __future__ import annotations

from typing import Any

from telemed.app import create_app
from telemed.embedded import Endpoints
from telemed.settings import load_settings
from tests.services import RedisServer, free_port


def endpoints(redis_url: str, kurento: tuple[str, ...]) -> Endpoints:
    return Endpoints(redis_url=redis_url, kurento_urls=kurento, turn_urls=(),
                     turn_secrets=(), jwt_secret="x" * 32)


async def test_healthz_answers_while_dependencies_are_down(aiohttp_client: Any) -> None:
    """Liveness answers 200 ok even when Redis and every media server are unreachable."""
    app = create_app(load_settings(env={}),
                     endpoints(f"redis://127.0.0.1:{free_port()}/0", ("ws://127.0.0.1:1/kurento",)))
    client = await aiohttp_client(app)
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_readyz_is_503_naming_what_is_down(
    aiohttp_client: Any, redis_server: RedisServer
) -> None:
    """With Redis up and the media server dead, readiness is 503 and marks only that server down."""
    dead = f"ws://127.0.0.1:{free_port()}/kurento"
    app = create_app(load_settings(env={}), endpoints(redis_server.url, (dead,)))
    client = await aiohttp_client(app)
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["redis"] == {"up": True}
    assert body["media_servers"][dead]["up"] is False


async def test_readyz_is_503_when_redis_is_down(aiohttp_client: Any) -> None:
    """With Redis unreachable, readiness is 503 and reports Redis as down."""
    app = create_app(load_settings(env={}),
                     endpoints(f"redis://127.0.0.1:{free_port()}/0", ("ws://127.0.0.1:1/kurento",)))
    client = await aiohttp_client(app)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["redis"]["up"] is False
