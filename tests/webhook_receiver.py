"""A real HTTP receiver on loopback for webhook tests: records what arrives, can fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mis.webhooks import verify_signature
from tests.services import free_port


@dataclass
class Receiver:
    secret: str
    url: str = ""
    #: Answer 500 to this many requests before accepting.
    fail_next: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    bad_signatures: int = 0
    #: Called with each signed request's attempt number (1, 2...) and its event id before
    #: it is taken; may wait (a receiver that hangs) and may return a status to answer
    #: instead of accepting.
    before: Callable[[int, str], Awaitable[int | None]] | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if not verify_signature(self.secret, request.headers.get("X-Telemed-Signature", ""),
                                body, now=time.time()):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500)
        if self.before is not None:
            refused = await self.before(self.attempts - self.bad_signatures,
                                        request.headers["X-Telemed-Event-Id"])
            if refused is not None:
                return web.Response(status=refused)
        event = json.loads(body)
        assert event["id"] == request.headers["X-Telemed-Event-Id"]
        async with self._arrived:
            self.received.append(event)
            self._arrived.notify_all()
        return web.Response(status=204)

    def events(self, call_id: str | None = None) -> list[str]:
        return [e["event"] for e in self.received
                if call_id is None or e["data"]["call"]["id"] == call_id]

    async def wait_for(self, event: str, call_id: str | None = None,
                       timeout: float = 20) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.received if e["event"] == event and (
                call_id is None or e["data"]["call"]["id"] == call_id)), None)

        async def wait() -> dict[str, Any]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: found() is not None)
            result = found()
            assert result is not None
            return result

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {event} webhook in {timeout}s; got "
                                 f"{self.events()}") from None


@contextlib.asynccontextmanager
async def run_receiver(secret: str, port: int | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
