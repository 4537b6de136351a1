"""What one recorded 2-party call costs the embedded media server, and how many fit.

The media server runs as its own process (`python -m mediaserver`); this process plays
both participants (aiortc peers) and reads the server's CPU time and RSS from /proc.
Baseline: the same server idle over the same window. Capacity: calls are added one at a
time (320x240@15) until the peers receive less than 90 % of the frames sent.

    python -m bench.mediaserver_call [--window 5] [--max-calls 6]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.common import args, cpu_seconds, report, rss_kib
from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import MediaPipeline
from tests.media_fixtures import PatternTrack, ToneTrack
from tests.services import free_port


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


class Party:
    def __init__(self, width: int, height: int, fps: int) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTrack(ToneTrack())
        self.pc.addTrack(PatternTrack(width, height, fps))
        self.frames = 0
        self.readers: list[asyncio.Task[None]] = []
        self.pc.on("track", lambda t: self.readers.append(asyncio.ensure_future(self._read(t))))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                if track.kind == "video":
                    self.frames += 1

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await self.pc.close()


async def start_call(kc: KurentoClient, folder: Path, n: int, size: tuple[int, int, int]
                     ) -> tuple[MediaPipeline, list[Party]]:
    pipeline = await MediaPipeline.create(kc)
    parties = [Party(*size), Party(*size)]
    eps = [await pipeline.create_webrtc_endpoint() for _ in parties]
    for i, ep in enumerate(eps):
        recorder = await pipeline.create_recorder_endpoint((folder / f"{n}-{i}.webm").as_uri())
        await ep.connect(recorder)
        await recorder.record()
    await eps[0].connect(eps[1])
    await eps[1].connect(eps[0])
    for party, ep in zip(parties, eps, strict=True):
        await party.pc.setLocalDescription(await party.pc.createOffer())
        answer = await ep.process_offer(party.pc.localDescription.sdp)
        await party.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pipeline, parties


async def measure(pid: int, window: float) -> tuple[float, float]:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(window)  # the measurement window itself
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0), rss_mib(pid)


async def run(url: str, pid: int, folder: Path, window: float, max_calls: int
              ) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with KurentoClient(url) as kc:
        idle_cpu, idle_rss = await measure(pid, window)
        figures.update(baseline_idle_cpu_pct=idle_cpu, baseline_idle_rss_mib=idle_rss)
        for label, size in (("320x240@15", (320, 240, 15)), ("640x480@30", (640, 480, 30))):
            pipeline, parties = await start_call(kc, folder, 0, size)
            await asyncio.sleep(2)  # past ICE, DTLS and the first keyframes
            cpu, rss = await measure(pid, window)
            figures[f"call_{label}_cpu_pct"] = cpu - idle_cpu
            figures[f"call_{label}_rss_mib"] = rss - idle_rss
            await pipeline.release()
            for p in parties:
                await p.close()
        calls: list[tuple[MediaPipeline, list[Party]]] = []
        fitting = 0
        for n in range(1, max_calls + 1):
            calls.append(await start_call(kc, folder, n, (320, 240, 15)))
            await asyncio.sleep(2)
            before = [p.frames for _, ps in calls for p in ps]
            await asyncio.sleep(window)
            got = [p.frames - b for p, b in zip([p for _, ps in calls for p in ps], before,
                                                 strict=True)]
            ratio = min(got) / (15 * window)
            figures[f"calls_{n}_worst_fps_ratio"] = round(ratio, 3)
            if ratio < 0.9:
                break
            fitting = n
        figures["calls_fitting_320x240"] = fitting
        for pipeline, parties in calls:
            await pipeline.release()
            for p in parties:
                await p.close()
    return figures


def main() -> None:
    opts = args(__doc__ or "", window=5.0, max_calls=6)
    window, max_calls = (1.0, 1) if opts.smoke else (opts.window, opts.max_calls)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = __import__("subprocess").Popen(
            [sys.executable, "-m", "mediaserver", "--port", str(port), "--recordings-root",
             tmp, "--log-level", "WARNING"])
        try:
            url = f"ws://127.0.0.1:{port}/kurento"

            async def go() -> dict[str, Any]:
                for _ in range(100):
                    with contextlib.suppress(OSError):
                        _, w = await asyncio.open_connection("127.0.0.1", port)
                        w.close()
                        break
                    await asyncio.sleep(0.1)  # another process starting: nothing to await
                return await run(url, server.pid, Path(tmp), window, max_calls)

            figures = asyncio.run(go())
        finally:
            server.terminate()
            server.wait()
    report("mediaserver_call", {"cores": os.cpu_count(), **figures})


if __name__ == "__main__":
    main()
