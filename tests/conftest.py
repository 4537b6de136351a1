"""Shared fixtures: real redis-server, coturn and Chromium on loopback, and a guard that
fails any async test whose code holds the event loop too long."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
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
    pytest-asyncio's phases, when the loop is not running at all, from counting. On a loaded
    machine a callback's wall time also holds the time the kernel kept the loop's thread
    waiting for a CPU; the thread's schedstat (run-queue wait) takes that back out, so only
    time the callback itself spent (computing or blocked) counts.

    A garbage collection is taken out too: a generation-2 run pauses whichever callback
    allocates when it falls due, for as long as the whole test process's heap (pytest,
    Playwright, every earlier test's leftovers, the cyclic garbage of torn-down aiortc peer
    connections) takes to walk, 0.25-0.75 s in the browser tests, not the code it landed in.
    Where the callback was also descheduled, only the larger of the two is taken out, so a
    real block is never hidden by counting one pause twice.
    """

    _original_run = asyncio.events.Handle._run
    #: Run-queue wait is read at most this often (s): reading it per callback costs ~5 us.
    SAMPLE_EVERY = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.worst = 0.0
        self.culprit = ""
        self.descheduled = 0.0  # the run-queue wait taken out of the worst callback
        self.collecting = 0.0  # the garbage collection taken out of the worst callback
        self._gc_spent = 0.0  # seconds in garbage collection since install, any thread
        self._gc_started: float | None = None
        self._schedstat: int | None = None
        self._sampled_at = -1e9
        self._sampled_wait = 0.0

    def _runqueue_wait(self) -> float:
        """Seconds the loop's thread has spent runnable but not running, since it started."""
        if self._schedstat is None:
            return 0.0
        return int(os.pread(self._schedstat, 64, 0).split()[1]) / 1e9

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Any thread's: a collection holds the GIL, so the loop waits for it either way.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._gc_spent += time.perf_counter() - self._gc_started
            self._gc_started = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        guard, original = self, LoopGuard._original_run
        with contextlib.suppress(OSError):  # Linux only; elsewhere, wall time alone
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        gc.callbacks.append(self._on_gc)

        def timed_run(handle: asyncio.Handle) -> None:
            if handle._loop is not guard.loop:  # type: ignore[attr-defined]
                original(handle)
                return
            started = time.perf_counter()
            gc_before = guard._gc_spent
            if started - guard._sampled_at > guard.SAMPLE_EVERY:
                guard._sampled_at, guard._sampled_wait = started, guard._runqueue_wait()
            try:
                original(handle)
            finally:
                took = time.perf_counter() - started
                if took > LOOP_BLOCK_LIMIT:
                    waited = max(0.0, guard._runqueue_wait() - guard._sampled_wait)
                    collecting = guard._gc_spent - gc_before
                    took -= max(waited, collecting)
                    guard._sampled_at = -1e9  # the next callback takes a fresh sample
                else:
                    waited = collecting = 0.0
                if took > guard.worst:
                    guard.worst, guard.descheduled = took, waited
                    guard.collecting = collecting
                    if took > LOOP_BLOCK_LIMIT:
                        guard.culprit = _describe(handle)

        monkeypatch.setattr(asyncio.events.Handle, "_run", timed_run)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None

    def verdict(self, limit: float = LOOP_BLOCK_LIMIT) -> str | None:
        if self.worst <= limit:
            return None
        return (f"a callback blocked the event loop for {self.worst:.2f} s (limit {limit:.2f}"
                f" s, TELEMED_TEST_TIME_SCALE scales it; the larger of {self.descheduled:.2f} s"
                f" waiting for a CPU and {self.collecting:.2f} s of garbage collection not"
                f" counted): {self.culprit}. Move blocking work"
                " to a thread or make it async; mark a test that must block `blocks_loop`.")


def _describe(handle: asyncio.Handle) -> str:
    """The task a step belongs to, with where it now waits: just after the blocking code."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    return repr(task if isinstance(task, asyncio.Task) else handle)[:400]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true",
                     help="the long fuzz run: about 10^5 socket messages (docs/testing.md)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long", default=False):
        # Read by tests/test_fuzz_functional.py when it is imported, after this hook.
        os.environ.setdefault("TELEMED_FUZZ_EXAMPLES", "10000")
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
        guard.close()
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
