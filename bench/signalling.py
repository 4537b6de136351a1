"""Signalling hot path: trickle candidates client → hub → media server, and media-server
events media server → hub → client, through one hub node in its own process.

A load process holds N participants (N/2 two-party calls, each participant joined and
published) and also plays the media server: a scripted JSON-RPC server that answers at
once, so the figures are the hub's. Every candidate a participant sends carries a token
in its foundation; when the media server receives it as `addIceCandidate` it answers and
at once emits an `IceCandidateFound` event for the same endpoint, which the hub forwards
back to the participant. Leg 1 latency is send → media-server receipt, leg 2 is event sent
→ participant receipt (one clock: both ends live in the load process).

Two passes per server: saturation (each participant sends its next candidate as soon as
the previous one's event came back, at most `--cap` per second each, below the hub's
per-connection rate limit), then a paced pass at half the measured throughput. Baseline: a
bare aiohttp relay (`bench.server bare`) between the same participants and the same media
server, driven the same way — the stack's own limit.

`--profile` adds a saturated pass under cProfile in the hub process and prints where its
CPU went.

    python -m bench.signalling [--connections 1000] [--seconds 5] [--cap 40] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Child, bench_main, cpu_seconds, pct, serve_commands
from bench.common import tokens as read_tokens
from bench.scripted_kms import OFFER, ScriptedKms, run_scripted_kms

WARMUP = 0.5  # s of each pass left out of the figures
clock = time.perf_counter


class Load:
    """The participants and the scripted media server, in one process and one clock."""

    def __init__(self, kms: ScriptedKms) -> None:
        self.kms = kms
        kms.on_request = self._on_request
        self.http: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self._tokens = itertools.count()
        self.sent: dict[str, float] = {}
        self.emitted: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.leg1: list[tuple[float, float]] = []  # (arrival, latency)
        self.leg2: list[tuple[float, float]] = []

    def _on_request(self, method: str, params: dict[str, Any], now: float) -> Any:
        if method != "invoke" or params.get("operation") != "addIceCandidate":
            return None
        line = params["operationParams"]["candidate"]["candidate"]
        token = line.split(" ", 1)[0].split(":", 1)[1]
        sent = self.sent.pop(token, None)
        if sent is None:
            return None
        self.leg1.append((now, now - sent))
        return self._event(params["object"], token, line)

    async def _event(self, endpoint: str, token: str, line: str) -> None:
        self.emitted[token] = clock()
        await self.kms.emit(endpoint, "IceCandidateFound", {
            "candidate": {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}})

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            if body.get("type") != "candidate":
                continue
            now = clock()
            token = body["candidate"].split(" ", 1)[0].split(":", 1)[1]
            emitted = self.emitted.pop(token, None)
            if emitted is not None:
                self.leg2.append((now, now - emitted))
            waiter = self.waiting.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _request(self, ws: aiohttp.ClientWebSocketResponse, n: int, kind: str,
                       **fields: Any) -> dict[str, Any]:
        await ws.send_str(json.dumps({"type": kind, "id": n, **fields}))
        while True:
            reply: dict[str, Any] = json.loads((await ws.receive()).data)
            if reply.get("re") == n:
                if reply["type"] == "error":
                    raise RuntimeError(f"{kind}: {reply}")
                return reply

    async def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        n = body["connections"]
        tokens = read_tokens(body.get("tokens"), n)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gate = asyncio.Semaphore(50)

        async def one(token: str) -> aiohttp.ClientWebSocketResponse:
            async with gate:
                assert self.http is not None
                ws = await self.http.ws_connect(body["url"], protocols=["telemed.v1"],
                                                headers={"Origin": body["origin"]})
                await self._request(ws, 1, "hello", token=token)
                if body["publish"]:
                    await self._request(ws, 2, "join")
                    await self._request(ws, 3, "publish", sdp=OFFER)
                return ws

        start = clock()
        self.sockets = list(await asyncio.gather(*(one(t) for t in tokens)))
        self.readers = [asyncio.create_task(self._read(ws)) for ws in self.sockets]
        return {"seconds": clock() - start}

    def _candidate(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[str, Any]:
        token = f"t{next(self._tokens)}"
        self.sent[token] = clock()
        return token, ws.send_str(json.dumps({
            "type": "candidate", "target": "publish", "sdpMid": "0", "sdpMLineIndex": 0,
            "candidate": f"candidate:{token} 1 udp 2122260223 10.0.0.1 9 typ host"}))

    def _figures(self, start: float, end: float, cpu: float) -> dict[str, Any]:
        lo = start + WARMUP
        one = [lat for t, lat in self.leg1 if lo <= t <= end]
        two = [lat for t, lat in self.leg2 if lo <= t <= end]
        self.leg1.clear()
        self.leg2.clear()
        return {"msgs_per_s": (len(one) + len(two)) / (end - lo),
                "leg1_p50_ms": pct(one, 50) * 1000, "leg1_p99_ms": pct(one, 99) * 1000,
                "leg2_p50_ms": pct(two, 50) * 1000, "leg2_p99_ms": pct(two, 99) * 1000,
                "load_cpu": cpu / (end - start)}

    async def _drain(self) -> int:
        """Waits for what is still in flight; the number that never came back."""
        outstanding = [w for w in self.waiting.values() if not w.done()]
        if outstanding:
            await asyncio.wait(outstanding, timeout=5)
        lost = sum(1 for w in self.waiting.values() if not w.done())
        self.sent.clear()
        self.emitted.clear()
        self.waiting.clear()
        return lost

    async def saturate(self, body: dict[str, Any]) -> dict[str, Any]:
        gap = 1.0 / body["cap"]
        loop = asyncio.get_running_loop()
        cpu0 = sum(os.times()[:2])
        start = clock()
        end = start + body["seconds"]

        async def drive(ws: aiohttp.ClientWebSocketResponse) -> None:
            while (now := clock()) < end:
                token, send = self._candidate(ws)
                waiter = self.waiting[token] = loop.create_future()
                await send
                await waiter
                if (pause := now + gap - clock()) > 0:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(drive(ws) for ws in self.sockets))
        cpu = sum(os.times()[:2]) - cpu0
        lost = await self._drain()
        figures = self._figures(start, end, cpu)
        figures["lost"] = lost
        return figures

    async def paced(self, body: dict[str, Any]) -> dict[str, Any]:
        """An open loop: candidates at a fixed total rate, round-robin over participants."""
        rate = body["rate"]
        cpu0 = sum(os.times()[:2])
        start = clock()
        end = start + body["seconds"]
        turn = itertools.cycle(self.sockets)
        loop = asyncio.get_running_loop()
        sent = 0
        while (now := clock()) < end:
            for _ in range(int((now - start) * rate) - sent):
                token, send = self._candidate(next(turn))
                self.waiting[token] = loop.create_future()
                await send
                sent += 1
            await asyncio.sleep(0.001)
        cpu = sum(os.times()[:2]) - cpu0
        lost = await self._drain()
        figures = self._figures(start, end, cpu)
        figures["lost"] = lost
        figures["offered_msgs_per_s"] = 2 * rate
        return figures

    async def close(self, _: dict[str, Any]) -> dict[str, Any]:
        await asyncio.gather(*(ws.close() for ws in self.sockets))
        for task in self.readers:
            task.cancel()
        self.sockets, self.readers = [], []
        if self.http is not None:
            await self.http.close()
        return {"ok": True}


async def load_main() -> None:
    async with run_scripted_kms(clock) as (url, kms):
        load = Load(kms)
        await serve_commands({"kms": url}, {"setup": load.setup, "saturate": load.saturate,
                                            "paced": load.paced, "close": load.close})


def passes(load: Child, server: Child, opts: argparse.Namespace, tokens: str | None
           ) -> dict[str, Any]:
    setup = load.ask("setup", url=server.ready["url"], origin=server.ready["origin"],
                     tokens=tokens, connections=opts.connections, publish=tokens is not None)
    hub = tokens is not None
    heap: dict[str, Any] = {}
    if hub:
        # The heap a full collection walks, once the calls are set up.
        heap = server.ask("gc")
        server.ask("gc_pauses")
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    sat = load.ask("saturate", seconds=opts.seconds, cap=opts.cap)
    server_cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
    sat_gc = server.ask("gc_pauses") if hub else {}
    if opts.profile and tokens is not None:
        # A separate saturated pass: the profiler's own cost must not touch the figures.
        server.ask("profile_start")
        load.ask("saturate", seconds=opts.seconds, cap=opts.cap)
        found = server.ask("profile_stop", top=25)
        print(f"hub profile, saturated ({found['total_s']:.1f} s of CPU), by own time:")
        for row in found["top"]:
            print(f"  {100 * row['own_s'] / found['total_s']:5.1f} %  "
                  f"cum {100 * row['cum_s'] / found['total_s']:5.1f} %  {row['where']}"
                  f"  <- {', '.join(row['callers'][:2])}")
    if hub:
        server.ask("gc_pauses")
    half = load.ask("paced", rate=sat["msgs_per_s"] / 4, seconds=opts.seconds)
    pauses = server.ask("gc_pauses") if hub else {}
    load.ask("close")
    return {"setup_s": setup["seconds"], "sat": sat, "half": half, "server_cpu": server_cpu,
            "gc": pauses, "sat_gc": sat_gc, "heap": heap}


def measure(opts: argparse.Namespace, redis: str, tmp: Path) -> dict[str, Any]:
    tokens = str(tmp / "tokens.json")
    with Child("bench.signalling", "--load") as load:
        kms = load.ready["kms"]
        with Child("bench.server", "bare", "--kurento", kms) as relay:
            base = passes(load, relay, opts, None)
        with Child("bench.server", "hub", "--redis", redis, "--kurento", kms, "--calls",
                   str((opts.connections + 1) // 2), "--tokens", tokens) as hub:
            ours = passes(load, hub, opts, tokens)
    figures: dict[str, Any] = {"connections": opts.connections, "seconds": opts.seconds,
                               "cap_per_conn": opts.cap}
    for name, run in (("hub", ours), ("relay", base)):
        figures |= {
            f"{name}_msgs_per_s": run["sat"]["msgs_per_s"],
            f"{name}_sat_leg1_p50_ms": run["sat"]["leg1_p50_ms"],
            f"{name}_sat_leg1_p99_ms": run["sat"]["leg1_p99_ms"],
            f"{name}_sat_leg2_p50_ms": run["sat"]["leg2_p50_ms"],
            f"{name}_sat_leg2_p99_ms": run["sat"]["leg2_p99_ms"],
            f"{name}_sat_server_cpu": run["server_cpu"],
            f"{name}_sat_load_cpu": run["sat"]["load_cpu"],
            f"{name}_half_msgs_per_s": run["half"]["msgs_per_s"],
            f"{name}_half_leg1_p50_ms": run["half"]["leg1_p50_ms"],
            f"{name}_half_leg1_p99_ms": run["half"]["leg1_p99_ms"],
            f"{name}_half_leg2_p50_ms": run["half"]["leg2_p50_ms"],
            f"{name}_half_leg2_p99_ms": run["half"]["leg2_p99_ms"],
            f"{name}_lost": run["sat"]["lost"] + run["half"]["lost"],
        }
    figures["hub_setup_s"] = ours["setup_s"]
    figures["hub_gc_objects"] = ours["heap"]["objects"]
    figures["hub_gc_frozen"] = ours["heap"]["frozen"]
    figures["hub_full_gc_ms"] = ours["heap"]["full_ms"]
    figures["hub_sat_gc_collections"] = ours["sat_gc"]["collections"]
    figures["hub_sat_gc_full"] = ours["sat_gc"]["full"]
    figures["hub_sat_gc_ms"] = ours["sat_gc"]["total_ms"]
    figures["hub_sat_gc_max_pause_ms"] = ours["sat_gc"]["max_ms"]
    figures["hub_half_gc_collections"] = ours["gc"]["collections"]
    figures["hub_half_gc_full"] = ours["gc"]["full"]
    figures["hub_half_gc_max_pause_ms"] = ours["gc"]["max_ms"]
    figures["ratio_to_relay"] = ours["sat"]["msgs_per_s"] / base["sat"]["msgs_per_s"]
    capped = 2 * opts.cap * opts.connections
    figures["relay_hit_cap"] = base["sat"]["msgs_per_s"] > 0.9 * capped
    figures["target_ratio_met"] = figures["ratio_to_relay"] >= 0.5
    figures["target_half_p99_met"] = max(ours["half"]["leg1_p99_ms"],
                                         ours["half"]["leg2_p99_ms"]) < 10
    return figures


def main() -> None:
    bench_main("signalling", __doc__ or "", measure, load_main,
               {"connections": 20, "seconds": 1.5},
               connections=1000, seconds=5.0, cap=40.0, profile=False)


if __name__ == "__main__":
    main()
