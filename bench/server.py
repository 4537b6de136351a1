"""The server side of the benchmarks, each in a process of its own.

    python -m bench.server hub --redis URL --kurento URL --calls N --tokens FILE [...]
    python -m bench.server bare [--kurento URL]

`hub` is the real signalling service (`create_app`, the web pages and API included) with
N two-party calls created and their join tokens written to FILE. `bare` is the baseline: a
plain aiohttp WebSocket server that answers `hello` and `ping` and, given a media server
URL, relays `candidate` messages to it as JSON-RPC `addIceCandidate` and its `onEvent`
notifications back to the client — the least any relay between the two can do.

Commands on stdin (JSON lines): `gc`; `gc_pauses` (the collector's pauses since the last
ask); `profile_start` and `profile_stop` (cProfile of
the hub, top functions by own time); `snapshot` and `compare` (with `--tracemalloc`: what
was allocated since the snapshot, by source line).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import itertools
import json
import logging
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import Handler, raise_nofile, serve_commands, serve_ws, write_json
from mis.history import SINK
from signaling.call import CallKind
from telemed.collector import tune_collector
from tests.hub_fixtures import run_service


async def _gc(_: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    gc.collect()
    return {"ok": True, "full_ms": 1000 * (time.perf_counter() - t0),
            "objects": len(gc.get_objects()), "frozen": gc.get_freeze_count(),
            "threshold": gc.get_threshold()}


class GcPauses:
    """How long the cyclic garbage collector stopped the process, per generation."""

    def __init__(self) -> None:
        self._started = 0.0
        self.pauses: list[tuple[int, float]] = []
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    async def report(self, _: dict[str, Any]) -> dict[str, Any]:
        """Pauses since the last report."""
        pauses, self.pauses = self.pauses, []
        worst = max(pauses, key=lambda p: p[1], default=(-1, 0.0))
        return {"collections": len(pauses), "total_ms": 1000 * sum(p[1] for p in pauses),
                "max_ms": 1000 * worst[1], "max_generation": worst[0],
                "full": sum(1 for g, _ in pauses if g == 2)}


class Tracer:
    """tracemalloc around the connections: which lines hold the memory they added."""

    def __init__(self) -> None:
        self.before: tracemalloc.Snapshot | None = None

    async def snapshot(self, _: dict[str, Any]) -> dict[str, Any]:
        gc.collect()
        self.before = tracemalloc.take_snapshot()
        return {"ok": True}

    async def compare(self, body: dict[str, Any]) -> dict[str, Any]:
        gc.collect()
        assert self.before is not None
        after = tracemalloc.take_snapshot()
        top = int(body.get("top", 15))
        lines = after.compare_to(self.before, "lineno")
        by_file = after.compare_to(self.before, "filename")
        return {
            "traced_bytes": sum(s.size_diff for s in lines),
            "blocks": sum(s.count_diff for s in lines),
            "by_line": [{"where": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                         "bytes": s.size_diff, "blocks": s.count_diff} for s in lines[:top]],
            "by_file": [{"where": _short(s.traceback[0].filename), "bytes": s.size_diff}
                        for s in by_file[:top]],
        }


class Profiler:
    """cProfile over a pass: where the server's CPU went, by function (own time)."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    async def start(self, _: dict[str, Any]) -> dict[str, Any]:
        self.profile.enable()
        return {"ok": True}

    async def stop(self, body: dict[str, Any]) -> dict[str, Any]:
        self.profile.disable()
        stats = pstats.Stats(self.profile)
        total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
        def callers(v: Any) -> list[str]:
            # pstats keeps, per function, its callers with their (calls, ..., time) figures.
            by = sorted(v[4].items(), key=lambda kv: -kv[1][3])[:3]
            return [f"{_short(f)}:{line}({name})" for (f, line, name), _ in by]

        return {"total_s": total, "top": [
            {"where": f"{_short(f)}:{line}({name})", "own_s": v[2], "cum_s": v[3],
             "calls": v[1], "callers": callers(v)}
            for (f, line, name), v in rows[:int(body.get("top", 20))]]}


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


async def hub(opts: argparse.Namespace) -> None:
    profiler = Profiler()
    handlers: dict[str, Handler] = {"gc": _gc, "profile_start": profiler.start,
                                    "profile_stop": profiler.stop,
                                    "gc_pauses": GcPauses().report}
    if opts.tracemalloc:
        tracer = Tracer()
        handlers |= {"snapshot": tracer.snapshot, "compare": tracer.compare}
    env = {"TELEMED_LOG_LEVEL": "ERROR", "TELEMED_MEDIA_HEALTH_INTERVAL": "5",
           # As deployed on several nodes (bench.nodes): a node with it off relays no
           # socket to a begun call another node runs.
           "TELEMED_CALLS_TAKE_OVER": str(opts.take_over).lower()}
    with tempfile.TemporaryDirectory() as tmp:
        async with run_service(Path(tmp), opts.redis, tuple(opts.kurento),
                               watchdog_timeout=opts.watchdog_timeout, env=env) as service:
            if opts.kurento[0] != "ws://127.0.0.1:9/kurento":
                await asyncio.wait_for(service.hub.pool.wait_up(), 10)
            # As `telemed.cli run` does once it serves: the process measured is the one
            # deployed.
            tune_collector()
            tokens, ids = [], []
            for i in range(opts.calls):
                call = service.hub.create_call(CallKind.CONSULTATION, [
                    (f"p{i}", "P", "patient"), (f"d{i}", "D", "doctor")])
                ids.append(call.id)
                tokens.append([service.token(call.id, f"p{i}"),
                               service.token(call.id, f"d{i}", role="doctor")])
            # In Redis before the tokens go out: another node (bench.nodes) reads them there.
            await service.app[SINK].settle()
            write_json(opts.tokens, tokens)

            async def deadlines(_: dict[str, Any]) -> dict[str, Any]:
                """Each call's next watchdog deadline (CLOCK_MONOTONIC, as the load's)."""
                sessions = [service.hub.sessions.get(i) for i in ids]
                return {"deadlines": [s.watchdog.next_deadline() if s else None
                                      for s in sessions]}

            # When the hub set out to end each call (its participants are told in that
            # step, before any await): the hub's own share of the lateness, without the
            # load process's. Wrapped here, in the benchmark's process only.
            ending: dict[str, float] = {}
            real_end = service.hub.end

            async def timed_end(call_id: str, *args: Any, **kwargs: Any) -> None:
                ending.setdefault(call_id, time.monotonic())
                await real_end(call_id, *args, **kwargs)

            service.hub.end = timed_end  # type: ignore[method-assign]
            # The watchdog ends its calls with end_soon (told within the timer callback).
            real_end_soon = service.hub.end_soon

            def timed_end_soon(call_id: str, *args: Any, **kwargs: Any) -> None:
                ending.setdefault(call_id, time.monotonic())
                real_end_soon(call_id, *args, **kwargs)

            service.hub.end_soon = timed_end_soon  # type: ignore[method-assign]

            async def ended(_: dict[str, Any]) -> dict[str, Any]:
                return {"ending": [ending.get(i) for i in ids]}

            handlers["watchdog_deadlines"] = deadlines
            handlers["ending"] = ended
            await serve_commands({"url": service.ws_url, "origin": service.url,
                                  "pid": os.getpid()}, handlers)


class Bare:
    """The baseline server; a relay when it has a media server to relay to."""

    def __init__(self, kurento: str | None) -> None:
        self.kurento = kurento
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self.clients: dict[str, web.WebSocketResponse] = {}
        self._ids = itertools.count(1)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("telemed.v1",))
        await ws.prepare(request)
        endpoint = f"ep{next(self._ids)}"
        self.clients[endpoint] = ws
        async for msg in ws:
            body = json.loads(msg.data)
            kind = body.get("type")
            if kind == "hello":
                await ws.send_str(json.dumps({"type": "welcome", "re": body.get("id")}))
            elif kind == "ping":
                await ws.send_str(json.dumps({"type": "pong", "re": body.get("id")}))
            elif kind == "candidate" and self.upstream is not None:
                await self.upstream.send_str(json.dumps({
                    "jsonrpc": "2.0", "id": next(self._ids), "method": "invoke", "params": {
                        "object": endpoint, "operation": "addIceCandidate",
                        "operationParams": {"candidate": {
                            "candidate": body.get("candidate"), "sdpMid": body.get("sdpMid"),
                            "sdpMLineIndex": body.get("sdpMLineIndex")}},
                        "sessionId": "bare"}}))
        del self.clients[endpoint]
        return ws

    async def relay_events(self) -> None:
        assert self.upstream is not None
        async for msg in self.upstream:
            body = json.loads(msg.data)
            if body.get("method") != "onEvent":
                continue  # replies: the relay trusts the media server
            value = body["params"]["value"]
            ws = self.clients.get(value["object"])
            if ws is not None:
                await ws.send_str(json.dumps({"type": "candidate", "target": "publish",
                                              **value["data"]["candidate"]}))


async def bare(opts: argparse.Namespace) -> None:
    server = Bare(opts.kurento[0] if opts.kurento else None)
    async with serve_ws(server.handler, "/ws") as port, aiohttp.ClientSession() as http:
        relay = None
        if server.kurento is not None:
            server.upstream = await http.ws_connect(server.kurento, max_msg_size=0)
            relay = asyncio.create_task(server.relay_events())
        await serve_commands({"url": f"ws://127.0.0.1:{port}/ws",
                              "origin": f"http://127.0.0.1:{port}", "pid": os.getpid()},
                             {"gc": _gc})
        if relay is not None:
            relay.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["hub", "bare"])
    parser.add_argument("--redis", default="")
    parser.add_argument("--kurento", action="append", default=[])
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--tokens", default="")
    parser.add_argument("--watchdog-timeout", type=float, default=600.0)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--take-over", action="store_true")
    opts = parser.parse_args()
    raise_nofile()
    if opts.tracemalloc:
        tracemalloc.start(1)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(hub(opts) if opts.mode == "hub" else bare(opts))


if __name__ == "__main__":
    main()
