"""`KurentoPool`: several media servers, health-checked; new pipelines go to the least loaded.

A server is *down* when its socket has been gone longer than `down_after` or its probes keep
failing; every pipeline placed on it is then reported lost (`on_pipelines_lost`). A socket
whose session the server forgot reports the pipelines that lived on that socket lost at
once, but does not mark the server down: it has just answered. A down server is used again
as soon as it answers.

"Lost" is our verdict, not the server's: unless the server answers with a new `serverId`
(a restart), the pipelines may still be running, streaming and recording. The pool keeps
their ids and `release`s them as soon as the same server process answers again.

The health probe is `ServerManager.getUsedMemory`. It is not `getPipelines`: on KMS that
call makes an internal session co-own every object on the server, which stops KMS's
garbage collector from freeing anything while the probe runs (KMS-SOURCE-NOTES.md item 8).
Other users' pipelines are counted from the manager's `ObjectCreated`/`ObjectDestroyed`
events instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kurento_ctl.client import KurentoClient, SessionLoss, safe_call
from kurento_ctl.errors import KurentoError
from kurento_ctl.events import KurentoEvent, ObjectCreated, ObjectDestroyed
from kurento_ctl.objects import MediaObject, MediaPipeline, ServerManager

__all__ = ["KurentoPool", "NoMediaServer", "PooledServer"]

log = logging.getLogger(__name__)

LostHandler = Callable[[str, set[str]], None]


class NoMediaServer(KurentoError):
    """No media server in the pool is reachable."""


@dataclass
class PooledServer:
    url: str
    #: Health probes only: Kurento likely serves one socket's requests in order, so a slow
    #: probe must not sit in front of a call's processOffer (and the other way round).
    client: KurentoClient
    #: The sockets that create and drive pipelines; each pipeline lives on one of them.
    call_clients: list[KurentoClient] = field(default_factory=list)
    up: bool = False
    failures: int = 0
    disconnected_since: float | None = None
    pipelines: set[str] = field(default_factory=set)
    #: Pipelines anyone created since the probe socket subscribed to the manager's events
    #: (plus the last sweep's census), minus those destroyed since.
    seen_pipelines: set[str] = field(default_factory=set)
    watching: bool = False
    #: Pipelines reported lost that may still run, and the serverId they ran on: released
    #: once that same server process answers again.
    orphans: set[str] = field(default_factory=set)
    orphans_server_id: str | None = None

    @property
    def load(self) -> int:
        """Pipelines on the server, ours or anyone's, as last seen (ours counted at once)."""
        return max(len(self.pipelines), len(self.seen_pipelines))

    def describe(self) -> dict[str, Any]:
        return {"up": self.up, "pipelines": len(self.pipelines), "load": self.load,
                "sockets": 1 + len(self.call_clients)}

    @property
    def all_clients(self) -> list[KurentoClient]:
        return [self.client, *self.call_clients]

    def call_client(self) -> KurentoClient | None:
        """The connected call socket holding the fewest of our pipelines."""
        connected = [c for c in self.call_clients if c.connected]
        return min(connected, key=lambda c: self.per_client.get(id(c), 0), default=None)

    per_client: dict[int, int] = field(default_factory=dict)


class KurentoPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        health_interval: float = 2.0,
        down_after: float = 3.0,
        failures_to_down: int = 2,
        check_timeout: float = 2.0,
        sockets: int = 1,
        client_factory: Callable[[str], KurentoClient] | None = None,
        node_id: str | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a pool needs at least one media server URL")
        self._factory = client_factory or (lambda url: KurentoClient(url))
        #: This signalling process, as written into the `telemed.node` tag of what it
        #: creates (the lead's wiring may pass a stable node name).
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}"
        self._background: set[asyncio.Task[None]] = set()
        self.sockets = max(1, sockets)
        self.servers = [PooledServer(url, self._factory(url),
                                     [self._factory(url) for _ in range(self.sockets)])
                        for url in urls]
        self.health_interval = health_interval
        self.down_after = down_after
        self.failures_to_down = failures_to_down
        # Not tied to the interval: a busy server may answer slower than we poll it.
        self.check_timeout = check_timeout
        self._lost_handlers: list[LostHandler] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._placed: dict[str, int] = {}
        for server in self.servers:
            self._watch(server)

    def _watch(self, server: PooledServer) -> None:
        for client in server.all_clients:
            client.on_session_lost(functools.partial(self._session_lost, server, client))

    def _session_lost(self, server: PooledServer, client: KurentoClient,
                      loss: SessionLoss) -> None:
        if client is server.client:
            server.watching = False  # its subscriptions went with the session
        # Only this socket's pipelines: another socket may already have reconnected to the
        # restarted server and placed new, healthy pipelines there.
        key = id(client)
        lost = {p for p in server.pipelines if self._placed.get(p) == key}
        server.pipelines -= lost
        server.per_client.pop(key, None)
        for pipeline_id in lost:
            self._placed.pop(pipeline_id, None)
        if loss.restarted:
            server.seen_pipelines.clear()
            server.orphans.clear()
            log.warning("! media server %s restarted: %d pipelines gone", server.url,
                        len(lost))
        else:
            # Same process, session forgotten: the objects run on without an owner we know.
            log.warning("! media server %s forgot session %s: releasing its %d pipelines",
                        server.url, loss.session_id, len(lost))
            self._background_task(self._release(server, lost))
        if lost:
            for handler in list(self._lost_handlers):
                safe_call(handler, server.url, lost)

    def _background_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, server: PooledServer, pipeline_ids: set[str]) -> None:
        """Releases pipelines by id from any of our sessions (KMS allows it; an unknown id
        is a no-op). On a call socket: a recorder's release can take KMS 4 s, which must
        not sit in front of a health probe."""
        client = server.call_client() or server.client
        for pipeline_id in sorted(pipeline_ids):
            try:
                await MediaObject(client, pipeline_id).release()
                server.orphans.discard(pipeline_id)
                log.info("= released lost pipeline %s on %s", pipeline_id, server.url)
            except KurentoError as exc:
                log.warning("! releasing lost pipeline %s on %s failed: %s", pipeline_id,
                            server.url, exc)

    def on_pipelines_lost(self, handler: LostHandler) -> None:
        """`handler(url, pipeline_ids)` when a server goes down or forgets our session."""
        self._lost_handlers.append(handler)

    async def start(self) -> None:
        """Connects to every server that answers; the others are retried by the health loop."""
        await asyncio.gather(*(self._connect(s) for s in self.servers))
        self._task = asyncio.create_task(self._health(), name="kurento-pool-health")

    async def _connect(self, server: PooledServer) -> None:
        try:
            await asyncio.gather(*(c.connect() for c in server.all_clients))
            server.up = True
            server.failures = 0
            self._notify()
        except (OSError, TimeoutError, KurentoError, Exception) as exc:
            # aiohttp raises a variety of errors for an unreachable host.
            log.warning("! media server %s unreachable: %s", server.url, type(exc).__name__)
            for client in server.all_clients:
                with contextlib.suppress(Exception):
                    await client.close()
            server.client = self._factory(server.url)
            server.call_clients = [self._factory(server.url) for _ in range(self.sockets)]
            server.per_client.clear()
            server.watching = False
            self._watch(server)
            server.up = False

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(c.close() for s in self.servers for c in s.all_clients),
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
        if not client.connected or server.call_client() is None:
            server.disconnected_since = server.disconnected_since or now
            if server.up and now - server.disconnected_since >= self.down_after:
                self._lose(server, f"unreachable for {self.down_after}s")
            return
        server.disconnected_since = None
        try:
            if not server.watching:
                await asyncio.wait_for(self._watch_pipelines(server), self.check_timeout)
            await asyncio.wait_for(ServerManager(client).invoke("getUsedMemory"),
                                   self.check_timeout)
            server.failures = 0
            if not server.up:
                log.info("= media server %s is back", server.url)
                server.up = True
                self._notify()
            if server.orphans:
                if client.server_id == server.orphans_server_id:
                    self._background_task(self._release(server, set(server.orphans)))
                else:
                    server.orphans.clear()  # a new process: they died with the old one
        except (KurentoError, TimeoutError):
            server.failures += 1
            if server.up and server.failures >= self.failures_to_down:
                self._lose(server, f"{server.failures} failed health checks")

    async def _watch_pipelines(self, server: PooledServer) -> None:
        manager = ServerManager(server.client)

        def created(e: KurentoEvent) -> None:
            object_id = str(e.raw.get("object", ""))
            if object_id.endswith("_kurento.MediaPipeline"):
                server.seen_pipelines.add(object_id)

        def destroyed(e: KurentoEvent) -> None:
            server.seen_pipelines.discard(str(e.raw.get("objectId", "")))

        await manager.subscribe(ObjectCreated, created)
        await manager.subscribe(ObjectDestroyed, destroyed)
        server.watching = True

    def _lose(self, server: PooledServer, why: str) -> None:
        server.up = False
        lost, server.pipelines = server.pipelines, set()
        server.orphans |= lost
        server.orphans_server_id = server.client.server_id
        server.per_client.clear()
        for pipeline_id in lost:
            self._placed.pop(pipeline_id, None)
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
        candidates = [s for s in self.servers if s.up and s.call_client() is not None]
        if not candidates:
            raise NoMediaServer("no media server is reachable")
        return min(candidates, key=lambda s: s.load)

    def placement(self) -> tuple[PooledServer, KurentoClient]:
        """Where a new pipeline goes: the least-loaded reachable server, and on it the call
        socket with the fewest of our pipelines. Create it there, then `adopt()` it."""
        server = self.pick()
        client = server.call_client()
        assert client is not None  # pick() only returns servers with one
        return server, client

    def adopt(self, server: PooledServer, pipeline: MediaPipeline) -> None:
        """Tracks a pipeline created on a `placement()` socket, for load and loss reports."""
        key = id(pipeline.client)
        server.pipelines.add(pipeline.id)
        server.per_client[key] = server.per_client.get(key, 0) + 1
        self._placed[pipeline.id] = key

    async def create_pipeline(self) -> tuple[PooledServer, MediaPipeline]:
        """A new pipeline on the least-loaded reachable server, tracked for loss reports."""
        server, client = self.placement()
        pipeline = await MediaPipeline.create(client)
        self.adopt(server, pipeline)
        return server, pipeline

    def forget_pipeline(self, server: PooledServer, pipeline_id: str) -> None:
        server.pipelines.discard(pipeline_id)
        key = self._placed.pop(pipeline_id, None)
        if key is not None and server.per_client.get(key):
            server.per_client[key] -= 1

    def status(self) -> dict[str, dict[str, Any]]:
        return {s.url: s.describe() for s in self.servers}
