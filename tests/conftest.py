"""Shared fixtures: real redis-server, coturn and Chromium on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RedisServer,
    TurnServer,
    require_binary,
    run_redis,
    run_turnserver,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A client on a clean database for this test."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServer]:
    with run_turnserver(tmp_path_factory.mktemp("turn")) as server:
        yield server


async def _chromium(args: list[str]) -> AsyncIterator[Any]:
    require_binary(CHROMIUM)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """Headless Debian Chromium with fake camera and microphone, driven by Playwright."""
    async for b in _chromium(CHROMIUM_ARGS):
        yield b


@pytest.fixture
async def browser_without_media_permission(tmp_path: Path) -> AsyncIterator[Any]:
    """Chromium that grants no camera permission on its own: pages that never ask for it
    get mDNS (`<uuid>.local`) host candidates, as patients' browsers do."""
    async for b in _chromium([a for a in CHROMIUM_ARGS
                              if a != "--use-fake-ui-for-media-stream"]):
        yield b
