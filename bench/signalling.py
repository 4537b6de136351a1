"""Signalling hot path: authenticated participants exchange request/reply messages with one
hub node over WebSockets (validation, dispatch, encoding, per-connection writer). The load
comes from a separate process. Baseline: a bare aiohttp WebSocket echo server measured the
same way — the stack's own limit; our ratio to it is the hub's overhead.

What it does not cover yet: trickle candidates forwarded to a media server (the JSON-RPC
leg); see docs/benchmarks.md.

    python -m bench.signalling [--connections 1000] [--messages 20]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import args, pct, report
from signaling.call import CallKind
from tests.hub_fixtures import run_service
from tests.services import free_port, run_redis


async def client(url: str, origin: str, tokens: list[str], messages: int) -> dict[str, Any]:
    """The load: every connection says hello, then sends `messages` pings, one at a time."""
    latencies: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        sockets = await asyncio.gather(*(http.ws_connect(url, protocols=["telemed.v1"],
                                                         headers={"Origin": origin})
                                         for _ in tokens))
        for ws, token in zip(sockets, tokens, strict=True):
            await ws.send_str(json.dumps({"type": "hello", "id": 0, "token": token}))
        for ws in sockets:
            await ws.receive()

        async def drive(ws: aiohttp.ClientWebSocketResponse) -> None:
            for i in range(1, messages + 1):
                sent = time.perf_counter()
                await ws.send_str(json.dumps({"type": "ping", "id": i}))
                await ws.receive()
                latencies.append(time.perf_counter() - sent)

        start = time.perf_counter()
        await asyncio.gather(*(drive(ws) for ws in sockets))
        elapsed = time.perf_counter() - start
        await asyncio.gather(*(ws.close() for ws in sockets))
    return {"rate": len(latencies) / elapsed, "p50_ms": pct(latencies, 50) * 1000,
            "p99_ms": pct(latencies, 99) * 1000}


def load(url: str, origin: str, tokens: list[str], messages: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"url": url, "origin": origin, "tokens": tokens, "messages": messages}, fh)
    out = subprocess.run([sys.executable, "-m", "bench.signalling", "--client", fh.name],
                         capture_output=True, text=True, check=True)
    Path(fh.name).unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def echo_server() -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("telemed.v1",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"ws://127.0.0.1:{port}/ws"


async def measure(connections: int, messages: int, redis_url: str, tmp: Path
                  ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    runner, echo_url = await echo_server()
    base = await loop.run_in_executor(None, load, echo_url, "http://x", ["t"] * connections,
                                      messages)
    await runner.cleanup()
    async with run_service(tmp, redis_url, ("ws://127.0.0.1:9/kurento",),
                           env={"TELEMED_LOG_LEVEL": "WARNING"}) as service:
        tokens = []
        for i in range(0, connections, 2):
            call = service.hub.create_call(CallKind.CONSULTATION, [
                (f"p{i}", "P", "patient"), (f"d{i}", "D", "doctor")])
            tokens += [service.token(call.id, f"p{i}"), service.token(call.id, f"d{i}")]
        ours = await loop.run_in_executor(None, load, service.ws_url, service.url,
                                          tokens[:connections], messages)
    return {"connections": connections, "messages_each": messages,
            "hub_msgs_per_s": ours["rate"], "hub_p50_ms": ours["p50_ms"],
            "hub_p99_ms": ours["p99_ms"], "bare_msgs_per_s": base["rate"],
            "bare_p50_ms": base["p50_ms"], "bare_p99_ms": base["p99_ms"],
            "ratio_to_bare": ours["rate"] / base["rate"]}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        spec = json.loads(Path(sys.argv[2]).read_text())
        print(json.dumps(asyncio.run(client(spec["url"], spec["origin"], spec["tokens"],
                                            spec["messages"]))))
        return
    opts = args(__doc__ or "", connections=1000, messages=20)
    connections, messages = (20, 5) if opts.smoke else (opts.connections, opts.messages)
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp) / "redis") as redis:
        figures = asyncio.run(measure(connections, messages, redis.url, Path(tmp)))
    report("signalling", figures)


if __name__ == "__main__":
    main()
