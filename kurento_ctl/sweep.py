"""Tags that tie media objects to calls, and the sweep that releases what no live call owns.

Every pipeline this project creates carries, from the transaction that creates it,
`telemed.call` (the call id) and `telemed.node` (the signalling process that made it).
A signalling process that dies (SIGKILL, OOM, a lost host) leaves its pipelines running on
the media server, streaming and recording: KMS frees an object only when no session owns it
any more, and a live session that merely *touched* an object co-owns it
(KMS-SOURCE-NOTES.md item 8). The sweep finds them by tag and releases them.

The sweep lists pipelines with `ServerManager.getPipelines` and reads their tags, on a
throwaway socket and session of its own: on KMS, `getPipelines` makes an internal session
co-own every object and keeps it alive for 180-480 s after the last call, and reading a
pipeline's tags makes the reading session co-own the pipeline. Doing it on a long-lived
session would pin every pipeline on the server for that session's life. So KMS's own
garbage collector pauses for a few minutes after each sweep, and the sweep releases what
it finds; objects of other applications (no `telemed.call` tag) are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import KurentoError, ObjectNotFound
from kurento_ctl.objects import MediaObject, ServerManager

if TYPE_CHECKING:
    from kurento_ctl.pool import KurentoPool

__all__ = ["TAG_CALL", "TAG_ENDPOINT", "TAG_NODE", "LiveCalls", "OrphanSweeper",
           "SweepReport", "sweep_server"]

log = logging.getLogger(__name__)

TAG_CALL = "telemed.call"
TAG_NODE = "telemed.node"
#: On endpoints and recorders: "<participant>/<target>" ("alice/publish", "bob/alice",
#: "alice/recorder"), so that a takeover can tell the objects of a pipeline apart.
TAG_ENDPOINT = "telemed.endpoint"

#: Given call ids, the subset still live anywhere (telemed.app: unfinished in Redis, or
#: held by this node). Raising means "cannot tell": nothing is released.
LiveCalls = Callable[[set[str]], Awaitable[set[str]] | set[str]]


@dataclass
class SweepReport:
    url: str
    #: pipeline id -> (call id, node) of every tagged pipeline seen
    tagged: dict[str, tuple[str, str]] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    untagged: int = 0
    census: set[str] = field(default_factory=set)
    #: The liveness question failed (Redis away): nothing was released.
    undecided: bool = False


async def _tags(obj: MediaObject) -> dict[str, str]:
    value = await obj.invoke("getTags")
    tags: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            tags[item["key"]] = str(item.get("value", ""))
    return tags


async def sweep_server(url: str, live: LiveCalls, *, min_age: float = 60.0,
                       only_call: str | None = None, keep: frozenset[str] = frozenset(),
                       client_factory: Callable[[str], KurentoClient] | None = None,
                       ) -> SweepReport:
    """Releases, on the media server at `url`, every pipeline tagged with a call that is
    not live and that is older than `min_age` seconds (a call being set up may not be
    registered as live yet). `only_call`: look only at that call's pipelines, and release
    those not in `keep` even though the call is live (a transaction whose reply was lost
    may have created one we never learnt the id of)."""
    report = SweepReport(url)
    client = (client_factory or KurentoClient)(url)
    try:
        await client.connect()
        report.census = set(await ServerManager(client).get_pipelines())
        ages: dict[str, float] = {}
        for pipeline_id in sorted(report.census):
            pipeline = MediaObject(client, pipeline_id)
            try:
                tags = await _tags(pipeline)
                created = await pipeline.invoke("getCreationTime")
            except ObjectNotFound:
                continue  # released meanwhile
            if TAG_CALL not in tags:
                report.untagged += 1
                continue
            report.tagged[pipeline_id] = (tags[TAG_CALL], tags.get(TAG_NODE, ""))
            ages[pipeline_id] = time.time() - float(created or 0)
        if only_call is not None:
            doomed = [p for p, (call, _) in report.tagged.items()
                      if call == only_call and p not in keep]
        else:
            try:
                answer = live({call for call, _ in report.tagged.values()})
                alive = await answer if inspect.isawaitable(answer) else answer
            except Exception as exc:
                # Not knowing which calls are live must never read as "none is".
                log.error("! cannot tell which calls are live (%s): nothing released on %s",
                          type(exc).__name__, url)
                report.undecided = True
                return report
            doomed = [p for p, (call, _) in report.tagged.items() if call not in alive]
        for pipeline_id in doomed:
            if only_call is None and ages[pipeline_id] < min_age:
                report.kept_young.append(pipeline_id)
                continue
            call, node = report.tagged[pipeline_id]
            await MediaObject(client, pipeline_id).release()
            report.released.append(pipeline_id)
            log.warning("! released orphaned pipeline %s of call %s (made by %s) on %s",
                        pipeline_id, call, node or "?", url)
    finally:
        await client.close()
    return report


class OrphanSweeper:
    """Sweeps every reachable server of a pool at `start()` and then every `interval`."""

    def __init__(self, pool: KurentoPool, live: LiveCalls, *, interval: float = 600.0,
                 min_age: float = 60.0,
                 client_factory: Callable[[str], KurentoClient] | None = None,
                 on_released: Callable[[SweepReport], Awaitable[None]] | None = None,
                 gate: Callable[[], Awaitable[bool]] | None = None,
                 ) -> None:
        self.pool = pool
        #: Asked before each periodic sweep, whose turn it is (several signalling nodes
        #: share the media servers: one sweeps per interval, since each sweep pauses
        #: Kurento's collector for minutes). None: always this one.
        self.gate = gate
        #: Told of every server's run that released something (the service finalizes the
        #: released calls' recordings then: their recorders have just closed the files).
        self.on_released = on_released
        self.live = live
        self.interval = interval
        self.min_age = min_age
        self._factory = client_factory
        self._task: asyncio.Task[None] | None = None
        self.reports: list[SweepReport] = []
        #: Sweeps done so far, and an event set after each (tests and callers await runs).
        self.runs = 0
        self.ran = asyncio.Event()

    async def sweep(self) -> list[SweepReport]:
        """One sweep over every server that is up; a failing server is logged, skipped."""
        reports = []
        for server in [s for s in self.pool.servers if s.up]:
            try:
                report = await sweep_server(server.url, self.live, min_age=self.min_age,
                                            client_factory=self._factory)
            except (KurentoError, OSError, TimeoutError) as exc:
                log.warning("! sweeping %s failed: %s", server.url, exc)
                continue
            for pipeline_id in report.released:
                self.pool.forget_pipeline(server, pipeline_id)
            server.seen_pipelines = set(report.census) - set(report.released)
            reports.append(report)
            if report.released and self.on_released is not None:
                try:
                    await self.on_released(report)
                except Exception:
                    log.exception("! after releasing orphans on %s", server.url)
        self.reports = reports
        self.runs += 1
        self.ran.set()
        self.ran = asyncio.Event()
        return reports

    async def start(self) -> None:
        """The start-up sweep, then the periodic ones in the background."""
        await self.sweep()
        self._task = asyncio.create_task(self._loop(), name="kurento-orphan-sweep")

    def start_periodic(self) -> None:
        """Only the periodic sweeps, for a caller that ran (or bounded) the first itself."""
        self._task = asyncio.create_task(self._loop(), name="kurento-orphan-sweep")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self.gate is None or await self.gate():
                    await self.sweep()
            except Exception:
                # A bug in one run must not end the sweeping for the process's life.
                log.exception("! orphan sweep failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

