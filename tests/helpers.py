"""Bounded waiting and time scaling for tests. Never sleep to wait: await an event."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Multiply every real timeout in tests by this factor on slow machines.
TIME_SCALE = float(os.environ.get("TELEMED_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


async def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 5.0,
    describe: Callable[[], object] | None = None,
    interval: float = 0.01,
) -> None:
    """Poll a cheap predicate until true; on timeout say the last state seen.

    For state that offers no event to await (a process table, a file appearing).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while not predicate():
        if loop.time() > deadline:
            state = describe() if describe is not None else "(no description)"
            raise AssertionError(
                f"condition not met within {scaled(timeout)}s; last state: {state}"
            )
        await asyncio.sleep(interval)


async def poll_until(check: Callable[[], Awaitable[object]], *, timeout: float = 5.0,
                     what: str = "condition", interval: float = 0.05) -> None:
    """Asks `check` (an async question to another process: an HTTP API, Redis) until it
    answers true; for state another process holds that offers no event to await."""
    async def poll() -> None:
        while True:
            if await check():
                return
            await asyncio.sleep(interval)

    await within(poll(), timeout, what)


async def within(aw: Awaitable[T], timeout: float = 5.0, what: str = "event") -> T:
    """Await `aw` with a scaled timeout and a readable failure."""
    try:
        return await asyncio.wait_for(aw, scaled(timeout))
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {scaled(timeout)}s") from None
