"""The loop guard (tests/conftest.py) fails an async test whose code blocks the event loop.

The hub serves every call from one event loop: one blocking call in a coroutine freezes
every call on the node, so the test suite refuses them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LOOP_BLOCK_LIMIT, LoopGuard
from tests.helpers import within

ROOT = Path(__file__).resolve().parents[1]

INNER = '''
import asyncio, time
from tests.conftest import LOOP_BLOCK_LIMIT

async def test_blocks():
    await asyncio.sleep(0)
    time.sleep(LOOP_BLOCK_LIMIT * 1.5)  # noqa: ASYNC251 - the blocking call to catch

async def test_awaits():
    await asyncio.sleep(0.05)

def test_sync_code_may_block():
    time.sleep(LOOP_BLOCK_LIMIT * 1.5)  # noqa: ASYNC251 - the blocking call to catch
'''


@pytest.mark.blocks_loop("it blocks on purpose, to see the guard measure it")
async def test_the_guard_measures_a_blocking_call_and_names_it(loop_guard: LoopGuard) -> None:
    """A time.sleep in a coroutine is measured by the guard and reported naming the coroutine."""
    await asyncio.sleep(0.01)
    assert loop_guard.verdict() is None
    time.sleep(LOOP_BLOCK_LIMIT * 1.5)  # noqa: ASYNC251 - the blocking call to catch
    await asyncio.sleep(0)  # the blocking step ends; the guard sees it
    problem = loop_guard.verdict()
    assert problem is not None and "blocked the event loop" in problem
    assert "test_the_guard_measures_a_blocking_call" in problem  # names the coroutine
    assert loop_guard.worst >= LOOP_BLOCK_LIMIT * 1.4  # less what it waited for a CPU


async def test_awaiting_and_other_loops_do_not_count(loop_guard: LoopGuard) -> None:
    """Awaiting a long sleep or blocking another thread's loop is not counted against the test."""
    def another_loop() -> None:
        async def hold() -> None:
            time.sleep(LOOP_BLOCK_LIMIT * 1.5)  # noqa: ASYNC251 - another loop
        asyncio.run(hold())  # its own loop in a thread: not the test's loop

    await asyncio.sleep(LOOP_BLOCK_LIMIT * 1.5)
    await asyncio.to_thread(another_loop)
    assert loop_guard.verdict() is None
    assert loop_guard.worst < LOOP_BLOCK_LIMIT


async def test_a_garbage_collection_is_not_counted_against_the_callback_it_lands_in(
    loop_guard: LoopGuard,
) -> None:
    """A collection running past the limit (made slow here by a gc callback that sleeps, as
    a big heap makes it in the suite) is taken out of the callback it paused, and noted."""
    def slow_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            time.sleep(LOOP_BLOCK_LIMIT * 1.5)  # the collection made slow

    await asyncio.sleep(0)
    gc.callbacks.append(slow_collection)  # after the guard's own: inside its window
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(slow_collection)
    await asyncio.sleep(0)  # the paused step ends; the guard sees it
    assert loop_guard.verdict() is None
    assert loop_guard.worst < LOOP_BLOCK_LIMIT


async def test_a_test_that_blocks_the_loop_fails(tmp_path: Path) -> None:
    """In a real pytest run the async test blocking its loop errors; sync blocking code passes."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import loop_guard, pytest_collection_modifyitems, "
        "pytest_configure  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
        "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
        "-rfE", str(tmp_path), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await within(proc.communicate(), 60, "the inner pytest run")
    text = out.decode()
    assert proc.returncode == 1, text
    assert "ERROR test_inner.py::test_blocks" in text, text
    assert "blocked the event loop" in text
    assert "3 passed, 1 error" in text, text  # the error is its teardown
