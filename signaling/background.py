"""`Background`: the hooks told of each call event and the tasks the hub runs in the
background. A failing hook or task is logged with its call's id; none is silently lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from signaling.call import Call
from signaling.events import CallEvent

__all__ = ["Background", "CallHook"]

# The hub's logger, as before the split: whichever part of the hub speaks.
log = logging.getLogger("signaling.hub")

CallHook = Callable[[CallEvent, Call, dict[str, Any]], Awaitable[None] | None]


class Background:
    def __init__(self) -> None:
        self.hooks: list[CallHook] = []
        #: Every task `spawn` runs, until it is done.
        self.tasks: set[asyncio.Task[Any]] = set()

    def emit(self, event: CallEvent, call: Call, data: dict[str, Any]) -> None:
        """Tells every hook; a failing hook is logged and the others still hear it."""
        for hook in list(self.hooks):
            try:
                result = hook(event, call, data)
                if asyncio.iscoroutine(result):
                    self.spawn(result, call.id)
            except Exception:
                log.exception("! hook failed for %s", event, extra={"call_id": call.id})

    def spawn(self, coro: Awaitable[Any], call_id: str) -> None:
        """A background task whose failure is logged with its call's id, never lost."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self.tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("! background task failed: %r", exc, exc_info=exc,
                          extra={"call_id": call_id})

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Waits for every task running now (a stop lets them finish)."""
        for task in list(self.tasks):
            # A failure was already logged with its call id by `spawn`.
            with contextlib.suppress(Exception):
                await task
