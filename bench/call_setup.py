"""Call setup: from `join` to the call being live (media flowing both ways, recorders
running, browsers' reports in) for 2-party calls with the embedded media server and aiortc
peers on loopback. Phases: signalling (join), publish negotiation (offer → answer, media
server round trips included), subscribe negotiation, then ICE + DTLS + first media until
`callLive`. Baseline: two bare aiortc peers connected directly (no server), offer to media.

    python -m bench.call_setup [--calls 20]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from bench.common import args, pct, report
from signaling.call import CallKind
from tests.hub_fixtures import CallClient, run_service
from tests.media_fixtures import PatternTrack, ToneTrack, run_mediaserver
from tests.services import run_redis


async def one_call(service: Any) -> dict[str, float]:
    call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                          ("d", "D", "doctor")])
    a = CallClient(service, service.token(call.id, "p"))
    b = CallClient(service, service.token(call.id, "d", role="doctor"))
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
    async with run_mediaserver(recordings_root=tmp) as (kms_url, _), run_service(
            tmp, redis_url, (kms_url,)) as service:
        for _ in range(calls):
            results.append(await one_call(service))
    base = [await direct_pair() for _ in range(max(3, calls // 4))]
    figures: dict[str, Any] = {"calls": calls}
    for phase in ("join", "publish", "subscribe", "media", "total"):
        values = [r[phase] * 1000 for r in results]
        figures[f"{phase}_p50_ms"] = pct(values, 50)
        figures[f"{phase}_p95_ms"] = pct(values, 95)
    figures["baseline_direct_pair_p50_ms"] = pct([b * 1000 for b in base], 50)
    figures["ratio_total_to_direct_pair"] = figures["total_p50_ms"] / figures[
        "baseline_direct_pair_p50_ms"]
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
