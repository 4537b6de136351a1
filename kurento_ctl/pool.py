"""`KurentoPool`: several media servers, health-checked; new pipelines go to the least loaded.

A server is *down* when its socket has been gone longer than `down_after` or its pings keep
failing; every pipeline placed on it is then reported lost (`on_pipelines_lost`), as it is
at once when the server restarted and forgot our session. A down server is used again as
soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kurento_ctl.client import KurentoClient, safe_call
from kurento_ctl.errors import KurentoError
from kurento_ctl.objects import MediaPipeline, ServerManager

__all__ = ["KurentoPool", "NoMediaServer", "PooledServer"]

log = logging.getLogger(__name__)

LostHandler = Callable[[str, set[str]], None]


class NoMediaServer(KurentoError):
    """No media server in the pool is reachable."""


@dataclass
class PooledServer:
    url: str
    client: KurentoClient
    up: bool = False
    failures: int = 0
    disconnected_since: float | None = None
    pipelines: set[str] = field(default_factory=set)
    reported_pipelines: int = 0

    @property
    def load(self) -> int:
        """Pipelines on the server, ours or anyone's, as last seen (ours counted at once)."""
        return max(len(self.pipelines), self.reported_pipelines)

    def describe(self) -> dict[str, Any]:
        return {"up": self.up, "pipelines": len(self.pipelines), "load": self.load}


class KurentoPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        health_interval: float = 2.0,
        down_after: float = 3.0,
        failures_to_down: int = 2,
        check_timeout: float = 2.0,
        client_factory: Callable[[str], KurentoClient] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a pool needs at least one media server URL")
        self._factory = client_factory or (lambda url: KurentoClient(url))
        self.servers = [PooledServer(url, self._factory(url)) for url in urls]
        self.health_interval = health_interval
        self.down_after = down_after
        self.failures_to_down = failures_to_down
        # Not tied to the interval: a busy server may answer slower than we poll it.
        self.check_timeout = check_timeout
        self._lost_handlers: list[LostHandler] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        for server in self.servers:
            self._watch(server)

    def _watch(self, server: PooledServer) -> None:
        def lost(_session_id: str) -> None:
            self._lose(server, "the media server restarted")

        server.client.on_session_lost(lost)

    def on_pipelines_lost(self, handler: LostHandler) -> None:
        """`handler(url, pipeline_ids)` when a server goes down or forgets our session."""
        self._lost_handlers.append(handler)

    async def start(self) -> None:
        """Connects to every server that answers; the others are retried by the health loop."""
        await asyncio.gather(*(self._connect(s) for s in self.servers))
        self._task = asyncio.create_task(self._health(), name="kurento-pool-health")

    async def _connect(self, server: PooledServer) -> None:
        try:
            await server.client.connect()
            server.up = True
            server.failures = 0
            self._notify()
        except (OSError, TimeoutError, KurentoError, Exception) as exc:
            # aiohttp raises a variety of errors for an unreachable host.
            log.warning("! media server %s unreachable: %s", server.url, type(exc).__name__)
            with contextlib.suppress(Exception):
                await server.client.close()
            server.client = self._factory(server.url)
            self._watch(server)
            server.up = False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(s.client.close() for s in self.servers),
                             return_exceptions=True)

    async def check(self) -> None:
        """One health round over every server (the loop calls it; tests may too)."""
        await asyncio.gather(*(self._check(s) for s in self.servers))

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check()

    async def _check(self, server: PooledServer) -> None:
        client = server.client
        if client.session_id is None and not client.connected:
            await self._connect(server)
            return
        now = time.monotonic()
        if not client.connected:
            server.disconnected_since = server.disconnected_since or now
            if server.up and now - server.disconnected_since >= self.down_after:
                self._lose(server, f"unreachable for {self.down_after}s")
            return
        server.disconnected_since = None
        try:
            server.reported_pipelines = len(
                await asyncio.wait_for(ServerManager(client).get_pipelines(),
                                       self.check_timeout))
            server.failures = 0
            if not server.up:
                log.info("= media server %s is back", server.url)
                server.up = True
                self._notify()
        except (KurentoError, TimeoutError):
            server.failures += 1
            if server.up and server.failures >= self.failures_to_down:
                self._lose(server, f"{server.failures} failed health checks")

    def _lose(self, server: PooledServer, why: str) -> None:
        server.up = False
        lost, server.pipelines = server.pipelines, set()
        log.warning("! media server %s down (%s): %d pipelines lost", server.url, why, len(lost))
        for handler in list(self._lost_handlers):
            safe_call(handler, server.url, lost)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_up(self) -> PooledServer:
        """Waits until some server can take a pipeline (readiness probes, tests)."""
        while True:
            with contextlib.suppress(NoMediaServer):
                return self.pick()
            await self._changed.wait()

    def pick(self) -> PooledServer:
        candidates = [s for s in self.servers if s.up and s.client.connected]
        if not candidates:
            raise NoMediaServer("no media server is reachable")
        return min(candidates, key=lambda s: s.load)

    async def create_pipeline(self) -> tuple[PooledServer, MediaPipeline]:
        """A new pipeline on the least-loaded reachable server, tracked for loss reports."""
        server = self.pick()
        pipeline = await MediaPipeline.create(server.client)
        server.pipelines.add(pipeline.id)
        return server, pipeline

    def forget_pipeline(self, server: PooledServer, pipeline_id: str) -> None:
        server.pipelines.discard(pipeline_id)

    def status(self) -> dict[str, dict[str, Any]]:
        return {s.url: s.describe() for s in self.servers}
