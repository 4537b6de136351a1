"""Shared fixtures: real redis-server, coturn and Chromium on loopback, and a guard that
fails any async test whose code holds the event loop too long."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import scaled
from tests.services import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RedisServer,
    TurnServer,
    require_binary,
    run_redis,
    run_turnserver,
)

#: One callback holding the loop longer than this fails the test. Real work on loopback
#: (SDP, JSON, aiortc's packet handling) stays far below it; a `time.sleep`, a blocking
#: socket or a synchronous subprocess in a coroutine does not.
LOOP_BLOCK_LIMIT = scaled(0.5)


class LoopGuard:
    """Times every callback one loop runs, as asyncio's debug mode does, without its cost.

    Timing the callbacks themselves (not a periodic tick's lateness) keeps the gaps between
    pytest-asyncio's phases, when the loop is not running at all, from counting.
    """

    _original_run = asyncio.events.Handle._run

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.worst = 0.0
        self.culprit = ""

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        guard, original = self, LoopGuard._original_run

        def timed_run(handle: asyncio.Handle) -> None:
            if handle._loop is not guard.loop:  # type: ignore[attr-defined]
                original(handle)
                return
            started = time.perf_counter()
            try:
                original(handle)
            finally:
                took = time.perf_counter() - started
                if took > guard.worst:
                    guard.worst = took
                    if took > LOOP_BLOCK_LIMIT:
                        guard.culprit = _describe(handle)

        monkeypatch.setattr(asyncio.events.Handle, "_run", timed_run)

    def verdict(self, limit: float = LOOP_BLOCK_LIMIT) -> str | None:
        if self.worst <= limit:
            return None
        return (f"a callback blocked the event loop for {self.worst:.2f} s (limit {limit:.2f}"
                f" s, TELEMED_TEST_TIME_SCALE scales it): {self.culprit}. Move blocking work"
                " to a thread or make it async; mark a test that must block `blocks_loop`.")


def _describe(handle: asyncio.Handle) -> str:
    """The task a step belongs to, with where it now waits: just after the blocking code."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    return repr(task if isinstance(task, asyncio.Task) else handle)[:400]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "blocks_loop(reason): the test blocks the event loop on purpose; the "
        "loop guard only records how long")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            # First, so the guard is set up before (and torn down after) every async fixture.
            item.fixturenames.insert(0, "loop_guard")


@pytest.fixture
async def loop_guard(request: pytest.FixtureRequest) -> AsyncIterator[LoopGuard]:
    """Fails the test (at teardown) if any callback on its loop ran past LOOP_BLOCK_LIMIT."""
    guard = LoopGuard(asyncio.get_running_loop())
    patch = pytest.MonkeyPatch()  # its own, so undoing it leaves the test's patches alone
    guard.install(patch)
    try:
        yield guard
    finally:
        patch.undo()
    request.node.user_properties.append(("loop_block_worst_s", round(guard.worst, 4)))
    problem = guard.verdict()
    if problem is not None and request.node.get_closest_marker("blocks_loop") is None:
        pytest.fail(problem, pytrace=False)


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
