"""Call setup: from `join` to the call being live (media flowing both ways, recorders
running, browsers' reports in) for 2-party calls with the embedded media server and aiortc
peers on loopback. Phases: signalling (join), publish negotiation (offer → answer, media
server round trips included), subscribe negotiation, then ICE + DTLS + first media until
`callLive`. Baseline: two bare aiortc peers connected directly (no server), offer to media.

Media-server round trips: the hub reaches the media server through an intercepting
proxy that logs every JSON-RPC request with the moments it was sent and answered. One
extra call, not in the timings, publishes its two participants one after the other and
then subscribes once; for each of those windows the benchmark counts the requests and the
*sequential* round trips — the longest chain of requests each sent after the previous one
was answered, which is what the answer waits for (requests in flight together count
once). Keepalive pings, health checks and trickled candidates (`addIceCandidate` on its
own, which the answer never waits for) are left out of the chain; the candidates are
counted apart. Target: 1 per publish (pipeline creation included) and per subscribe: one
Kurento transaction each.

    python -m bench.call_setup [--calls 20]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from bench.common import args, pct, report, serve_ws
from signaling.call import CallKind
from tests.hub_fixtures import CallClient, run_service
from tests.media_fixtures import PatternTrack, ToneTrack, run_mediaserver
from tests.services import run_redis

NOT_CALL_WORK = {"ping", "connect", "keepAlive"}
#: s; far above any setup time, so a slow machine gives slow figures rather than no-media
WATCHDOG = 60.0


class CountingProxy:
    """Between the hub and the media server: every request, when sent, when answered."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.log: list[dict[str, Any]] = []
        self._sockets = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets += 1
        sock = self._sockets
        pending: dict[Any, dict[str, Any]] = {}
        async with aiohttp.ClientSession() as http, http.ws_connect(
                self.upstream, max_msg_size=0) as up:

            async def down() -> None:
                async for msg in up:
                    body = json.loads(msg.data)
                    entry = pending.pop(body.get("id"), None)
                    if entry is not None:
                        entry["answered"] = time.perf_counter()
                    await ws.send_str(msg.data)

            reader = asyncio.create_task(down())
            async for msg in ws:
                body = json.loads(msg.data)
                params = body.get("params") or {}
                op = params.get("operation", "")
                if body.get("method") not in NOT_CALL_WORK and op != "getPipelines":
                    entry = {"socket": sock, "method": body.get("method"), "op": op,
                             "sent": time.perf_counter(), "answered": None,
                             "ops": len(params.get("operations") or [])}
                    pending[body.get("id")] = entry
                    self.log.append(entry)
                await up.send_str(msg.data)
            reader.cancel()
        return ws

    def window(self, start: float, end: float) -> dict[str, int]:
        """Requests sent within [start, end], and how many of them ran one after another.

        Trickled candidates (`addIceCandidate` on its own) are counted apart: the answer
        never waits for them — they follow it, or arrive from the browser at any time."""
        inside = [e for e in self.log if start <= e["sent"] <= end]
        trickled = [e for e in inside if e["op"] == "addIceCandidate"]
        done = sorted((e["sent"], e["answered"]) for e in inside
                      if e["answered"] is not None and e not in trickled)
        chain, free_at = 0, float("-inf")
        for sent, answered in sorted(done, key=lambda se: se[1]):
            if sent >= free_at:
                chain, free_at = chain + 1, answered
        inner = sum(e["ops"] for e in inside)
        return {"requests": len(done), "sequential": chain, "ops_in_transactions": inner,
                "trickled_candidates": len(trickled)}


@contextlib.asynccontextmanager
async def run_proxy(upstream: str) -> Any:
    proxy = CountingProxy(upstream)
    async with serve_ws(proxy.handler, "/kurento") as port:
        yield f"ws://127.0.0.1:{port}/kurento", proxy


async def count_round_trips(service: Any, proxy: CountingProxy) -> dict[str, int]:
    """One call, its steps one at a time, so each window holds one request's work."""
    a, b = two_parties(service)
    counts: dict[str, int] = {}
    try:
        await asyncio.gather(a.connect(), b.connect())
        await a.join()
        await b.join()
        for name, step in (("first_publish", a.publish), ("second_publish", b.publish),
                           ("subscribe", lambda: a.subscribe("d"))):
            start = time.perf_counter()
            await step()
            got = proxy.window(start, time.perf_counter())
            counts |= {f"{name}_{k}": v for k, v in got.items()}
        await b.request("end")
    finally:
        await asyncio.gather(a.close(), b.close())
    return counts


def two_parties(service: Any) -> tuple[CallClient, CallClient]:
    call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                          ("d", "D", "doctor")])
    return (CallClient(service, service.token(call.id, "p")),
            CallClient(service, service.token(call.id, "d", role="doctor")))


async def one_call(service: Any) -> dict[str, float]:
    a, b = two_parties(service)
    try:
        await asyncio.gather(a.connect(), b.connect())
        t0 = time.perf_counter()
        await asyncio.gather(a.join(), b.join())
        t1 = time.perf_counter()
        await asyncio.gather(a.publish(), b.publish())
        t2 = time.perf_counter()
        await asyncio.gather(a.subscribe("d"), b.subscribe("p"))
        t3 = time.perf_counter()
        await asyncio.gather(a.wait_event("callLive"), b.wait_event("callLive"))
        t4 = time.perf_counter()
        await b.request("end")
    finally:
        await asyncio.gather(a.close(), b.close())
    return {"join": t1 - t0, "publish": t2 - t1, "subscribe": t3 - t2, "media": t4 - t3,
            "total": t4 - t0}


async def direct_pair() -> float:
    """Two aiortc peers, no server: offer → first decoded frame on the other side."""
    caller, callee = RTCPeerConnection(), RTCPeerConnection()
    got = asyncio.Event()
    readers: list[asyncio.Task[None]] = []

    @callee.on("track")
    def on_track(track: Any) -> None:
        async def read() -> None:
            with contextlib.suppress(MediaStreamError):
                await track.recv()
                got.set()
        readers.append(asyncio.ensure_future(read()))

    start = time.perf_counter()
    caller.addTrack(ToneTrack())
    caller.addTrack(PatternTrack())
    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)
    await asyncio.wait_for(got.wait(), 20)
    elapsed = time.perf_counter() - start
    await caller.close()
    await callee.close()
    return elapsed


async def measure(calls: int, redis_url: str, tmp: Path) -> dict[str, Any]:
    results = []
    async with run_mediaserver(recordings_root=tmp) as (kms_url, _), run_proxy(
            kms_url) as (proxy_url, proxy), run_service(
                tmp, redis_url, (proxy_url,), watchdog_timeout=WATCHDOG) as service:
        await service.hub.pool.wait_up()
        trips = await count_round_trips(service, proxy)
        for _ in range(calls):
            results.append(await one_call(service))
    base = [await direct_pair() for _ in range(max(3, calls // 4))]
    figures: dict[str, Any] = {"calls": calls, **trips,
                               "target_one_round_trip_met": all(
                                   trips[f"{step}_sequential"] == 1 for step in
                                   ("first_publish", "second_publish", "subscribe"))}
    for phase in ("join", "publish", "subscribe", "media", "total"):
        values = [r[phase] * 1000 for r in results]
        figures[f"{phase}_p50_ms"] = pct(values, 50)
        figures[f"{phase}_p95_ms"] = pct(values, 95)
    figures["baseline_direct_pair_p50_ms"] = pct([b * 1000 for b in base], 50)
    figures["ratio_total_to_direct_pair"] = figures["total_p50_ms"] / figures[
        "baseline_direct_pair_p50_ms"]
    figures["target_total_p50_met"] = figures["total_p50_ms"] <= 500
    return figures


def main() -> None:
    opts = args(__doc__ or "", calls=20)
    calls = 2 if opts.smoke else opts.calls
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp) / "redis") as redis:
        figures = asyncio.run(measure(calls, redis.url, Path(tmp)))
    report("call_setup", figures)


if __name__ == "__main__":
    main()
