"""Idle capacity: memory per idle authenticated WebSocket and the connect + auth rate.

The hub runs in its own process (`bench.server hub`) with N/2 two-party calls created; a
load process opens N connections the way a browser does (Origin set, permessage-deflate
offered with a 2^15 window as Chromium does; `--compress 0` offers none), sends `hello`
with a join token and waits for `welcome`, at most `--concurrency` handshakes in flight.
Memory per connection is the growth of the server process's RSS over the N held
connections, after a garbage collection on both sides of it. Baseline: a bare aiohttp
WebSocket server (`bench.server bare`, answering `hello`) holding the same N connections
from the same load process.

`--trace` adds a pass with tracemalloc in the hub process and prints which source lines
hold the memory the connections added.

    python -m bench.idle [--connections 5000] [--concurrency 100] [--compress 15] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Child, bench_main, cpu_seconds, rss_kib, serve_commands
from bench.common import tokens as read_tokens

SETTLE = 1.0  # s; lets the last handshakes' buffers be freed before RSS is read


class Load:
    def __init__(self) -> None:
        self.http: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []

    async def connect(self, body: dict[str, Any]) -> dict[str, Any]:
        tokens = read_tokens(body.get("tokens"), body["connections"])
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gate = asyncio.Semaphore(body["concurrency"])
        failures: list[str] = []

        async def one(token: str) -> None:
            async with gate:
                assert self.http is not None
                try:
                    ws = await self.http.ws_connect(body["url"], protocols=["telemed.v1"],
                                                    headers={"Origin": body["origin"]},
                                                    compress=body["compress"])
                    await ws.send_str(json.dumps({"type": "hello", "id": 1, "token": token}))
                    reply = json.loads((await ws.receive()).data)
                except (aiohttp.ClientError, OSError, TypeError) as exc:
                    failures.append(type(exc).__name__)
                    return
                if reply.get("type") != "welcome":
                    failures.append(str(reply.get("code")))
                self.sockets.append(ws)
                # As a browser does: read on, so the server's heartbeat pings get answered.
                self.readers.append(asyncio.create_task(_read(ws)))

        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in tokens))
        elapsed = time.perf_counter() - start
        return {"held": len(self.sockets), "failures": len(failures),
                "failure_kinds": sorted(set(failures))[:5], "seconds": elapsed,
                "rate": len(self.sockets) / elapsed}

    async def close(self, _: dict[str, Any]) -> dict[str, Any]:
        await asyncio.gather(*(ws.close() for ws in self.sockets))
        for task in self.readers:
            task.cancel()
        self.sockets.clear()
        if self.http is not None:
            await self.http.close()
        return {"ok": True}


async def _read(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def open_sockets(pid: int) -> int:
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir()
               if fd.readlink().name.startswith("socket:"))


async def load_main() -> None:
    load = Load()
    await serve_commands({}, {"connect": load.connect, "close": load.close})


def hold(server: Child, connections: int, concurrency: int, tokens: str | None,
         compress: int) -> dict[str, Any]:
    """Opens and holds the connections; RSS of `server` before and after, in KiB."""
    with Child("bench.idle", "--load", timeout=900) as load:
        server.ask("gc")
        before = rss_kib(server.pid)
        sockets = open_sockets(server.pid)
        cpu0 = cpu_seconds(server.pid)
        got = load.ask("connect", url=server.ready["url"], origin=server.ready["origin"],
                       tokens=tokens, connections=connections, concurrency=concurrency,
                       compress=compress)
        cpu = cpu_seconds(server.pid) - cpu0
        time.sleep(SETTLE)
        server.ask("gc")
        after = rss_kib(server.pid)
        # What the server holds, not what the load believes it holds.
        held = open_sockets(server.pid) - sockets
        load.ask("close")
    return {**got, "rss_before_kib": before, "rss_after_kib": after, "server_held": held,
            "per_conn_kib": (after - before) / max(1, held),
            "server_cpu_s": cpu}


def trace(redis: str, connections: int, concurrency: int, compress: int, tmp: Path
          ) -> dict[str, Any]:
    tokens = str(tmp / "tokens-trace.json")
    with Child("bench.server", "hub", "--redis", redis, "--kurento", "ws://127.0.0.1:9/kurento",
               "--calls", str((connections + 1) // 2), "--tokens", tokens,
               "--tracemalloc") as server, Child("bench.idle", "--load", timeout=900) as load:
        server.ask("snapshot")
        load.ask("connect", url=server.ready["url"], origin=server.ready["origin"],
                 tokens=tokens, connections=connections, concurrency=concurrency,
                 compress=compress)
        time.sleep(SETTLE)
        found = server.ask("compare", top=20)
        load.ask("close")
    return found


def measure(opts: argparse.Namespace, redis: str, tmp: Path) -> dict[str, Any]:
    n, conc = opts.connections, opts.concurrency
    with Child("bench.server", "bare") as bare:
        base = hold(bare, n, conc, None, opts.compress)
    tokens = str(tmp / "tokens.json")
    with Child("bench.server", "hub", "--redis", redis, "--kurento", "ws://127.0.0.1:9/kurento",
               "--calls", str((n + 1) // 2), "--tokens", tokens) as hub:
        ours = hold(hub, n, conc, tokens, opts.compress)
    figures: dict[str, Any] = {
        "connections": n, "deflate_window_bits": opts.compress,
        "hub_held": ours["server_held"],
        "hub_failures": ours["failures"],
        "hub_kib_per_conn": ours["per_conn_kib"],
        "hub_rss_idle_mib": ours["rss_before_kib"] / 1024,
        "hub_rss_held_mib": ours["rss_after_kib"] / 1024,
        "hub_connect_auth_per_s": ours["rate"],
        "hub_cpu_ms_per_connect": 1000 * ours["server_cpu_s"] / max(1, ours["held"]),
        "bare_held": base["server_held"], "bare_kib_per_conn": base["per_conn_kib"],
        "bare_connect_per_s": base["rate"],
        "bare_cpu_ms_per_connect": 1000 * base["server_cpu_s"] / max(1, base["held"]),
        "ratio_memory_to_bare": ours["per_conn_kib"] / max(1e-9, base["per_conn_kib"]),
        "ratio_rate_to_bare": ours["rate"] / base["rate"],
        "target_kib_per_conn": 32, "target_met": ours["per_conn_kib"] <= 32,
    }
    if ours["failures"] or base["failures"]:
        print(f"failures: hub {ours['failure_kinds']} bare {base['failure_kinds']}",
              file=sys.stderr)
    if opts.trace:
        found = trace(redis, n, conc, opts.compress, tmp)
        print(f"tracemalloc: {found['traced_bytes'] / n / 1024:.1f} KiB traced per connection"
              f" ({found['blocks'] / n:.0f} blocks); largest by line:")
        for row in found["by_line"]:
            print(f"  {row['bytes'] / n:8.0f} B/conn {row['blocks'] / n:6.1f} blocks  "
                  f"{row['where']}")
        print("by file:")
        for row in found["by_file"]:
            print(f"  {row['bytes'] / n:8.0f} B/conn  {row['where']}")
        figures["traced_kib_per_conn"] = found["traced_bytes"] / n / 1024
    return figures


def main() -> None:
    bench_main("idle", __doc__ or "", measure, load_main,
               {"connections": 200, "trace": True},
               connections=5000, concurrency=100, compress=15, trace=False)


if __name__ == "__main__":
    main()
