"""What recorded calls cost the embedded media server, how many fit, and an 8-party
conference, with a load generator that encodes nothing.

The media server runs as its own process (`python -m mediaserver`); its CPU time and RSS
come from /proc. Every participant here plays a VP8/Opus WEBM made once with ffmpeg
(cached under ~/.cache/telemed-bench) through aiortc's `MediaPlayer(decode=False)`, and
receives through the server's own receive hook, counting encoded frames without decoding,
so the two cores measure the server, not its load. Delivery is frames received (by a
viewer, or written by a recorder) over frames sent, per stream, in the measuring window;
a call "fits" while its worst stream gets at least 98 %.

    python -m bench.mediaserver_call [--window 5] [--max-calls 12] [--parties 8]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamTrack

from bench.common import args, cpu_seconds, report, rss_kib
from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import MediaPipeline, RecorderEndpoint, WebRtcEndpoint
from mediaserver.forwarding import EncodedFrame, ForwardingReceiver
from tests.services import free_port

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "telemed-bench"
FIT = 0.98


def clip(width: int, height: int, fps: int, seconds: int) -> Path:
    """A VP8/Opus WEBM of ffmpeg's test sources, made once (a keyframe a second: file
    players cannot answer a keyframe request)."""
    path = CACHE / f"clip-{width}x{height}@{fps}-{seconds}s.webm"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.webm")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size={width}x{height}:rate={fps}", "-f", "lavfi", "-i",
             "sine=frequency=440:sample_rate=48000", "-t", str(seconds), "-c:v", "libvpx",
             "-deadline", "realtime", "-cpu-used", "8", "-b:v", "600k", "-g", str(fps),
             "-c:a", "libopus", "-b:a", "32k", str(partial)], check=True)
        partial.rename(path)
    return path


class Counted(MediaStreamTrack):
    """Passes a player's packets on, counting them."""

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self.inner = inner
        self.sent = 0

    async def recv(self) -> Any:
        item = await self.inner.recv()
        self.sent += 1
        return item

    def stop(self) -> None:
        self.inner.stop()
        super().stop()


class Peer:
    """A peer connection that may play a clip and counts the encoded frames it receives."""

    def __init__(self, source: Path | None, receive: bool) -> None:
        self.pc = RTCPeerConnection()
        self.tracks: dict[str, Counted] = {}
        self.received = {"audio": 0, "video": 0}
        self._hooks: list[ForwardingReceiver] = []
        if source is not None:
            player = MediaPlayer(str(source), decode=False)
            for track in (player.audio, player.video):
                assert track is not None
                counted = Counted(track)
                self.tracks[track.kind] = counted
                self.pc.addTransceiver(counted, direction="sendrecv" if receive else "sendonly")
        elif receive:
            for kind in ("audio", "video"):
                self.pc.addTransceiver(kind, direction="recvonly")
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers()
                        if t.receiver.track is track)
        self._hooks.append(ForwardingReceiver(receiver, self._count))

    def _count(self, frame: EncodedFrame) -> None:
        self.received[frame.kind] += 1

    async def connect(self, ep: WebRtcEndpoint) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await ep.process_offer(self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        for hook in self._hooks:
            hook.close()
        await self.pc.close()


class Room:
    """Publishers, each recorded, and what each viewer receives of which publisher."""

    def __init__(self) -> None:
        self.pipeline: MediaPipeline | None = None
        self.peers: list[Peer] = []
        self.recorders: list[tuple[Peer, RecorderEndpoint]] = []
        self.links: list[tuple[Peer, Peer]] = []  # (publisher, viewer)

    def snapshot(self) -> dict[str, list[int]]:
        return {"sent": [p.tracks[k].sent for p, _ in self.links for k in ("audio", "video")],
                "got": [v.received[k] for _, v in self.links for k in ("audio", "video")]}

    async def written(self) -> tuple[list[int], list[int]]:
        sent, written = [], []
        for publisher, recorder in self.recorders:
            stats = await recorder.get_stats()
            for kind in ("audio", "video"):
                sent.append(publisher.tracks[kind].sent)
                written.append(stats.get(f"media-counters_{kind}", {}).get("framesSent", 0))
        return sent, written

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.peers))
        if self.pipeline is not None:
            # An overloaded server takes its time closing dozens of peer connections.
            await self.pipeline.client.request("release", {"object": self.pipeline.id},
                                               timeout=120)


async def two_party_call(kc: KurentoClient, folder: Path | None, n: int, source: Path
                         ) -> Room:
    """Two participants, crosswise, as the hub connects a consultation; each recorded into
    `folder` unless it is None (bench.janus_compare's unrecorded phase)."""
    room = Room()
    room.pipeline = pipeline = await MediaPipeline.create(kc)
    parties = [Peer(source, receive=True), Peer(source, receive=True)]
    room.peers = parties
    eps = [await pipeline.create_webrtc_endpoint() for _ in parties]
    for i, (party, ep) in enumerate(zip(parties, eps, strict=True)):
        if folder is None:
            break
        recorder = await pipeline.create_recorder_endpoint((folder / f"{n}-{i}.webm").as_uri())
        await ep.connect(recorder)
        await recorder.record()
        room.recorders.append((party, recorder))
    await eps[0].connect(eps[1])
    await eps[1].connect(eps[0])
    room.links = [(parties[0], parties[1]), (parties[1], parties[0])]
    for party, ep in zip(parties, eps, strict=True):
        await party.connect(ep)
    return room


async def conference(kc: KurentoClient, folder: Path, size: int, source: Path) -> Room:
    """`size` publishers, each recorded and received by every other on its own endpoint."""
    room = Room()
    room.pipeline = pipeline = await MediaPipeline.create(kc)
    publishers = [Peer(source, receive=False) for _ in range(size)]
    room.peers.extend(publishers)
    for i, publisher in enumerate(publishers):
        ep = await pipeline.create_webrtc_endpoint()
        recorder = await pipeline.create_recorder_endpoint((folder / f"c{i}.webm").as_uri())
        await ep.connect(recorder)
        await recorder.record()
        room.recorders.append((publisher, recorder))
        for _ in range(size - 1):
            viewer = Peer(None, receive=True)
            view_ep = await pipeline.create_webrtc_endpoint()
            await ep.connect(view_ep)
            await viewer.connect(view_ep)
            room.peers.append(viewer)
            room.links.append((publisher, viewer))
        await publisher.connect(ep)
    return room


#: What a frame may take from its sender to a receiver or a file: the frames sent in a
#: window are looked for in the window shifted by this much.
IN_FLIGHT = 1.0


async def window(pid: int, rooms: list[Room], seconds: float) -> dict[str, float]:
    """Server CPU % of one core, this process's too, and delivery ratios over `seconds`."""
    sent0 = [r.snapshot()["sent"] for r in rooms]
    files_sent0 = [(await r.written())[0] for r in rooms]
    c0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    await asyncio.sleep(IN_FLIGHT)  # what was sent before the window arrives meanwhile
    got0 = [r.snapshot()["got"] for r in rooms]
    files_got0 = [(await r.written())[1] for r in rooms]
    await asyncio.sleep(seconds - IN_FLIGHT)  # the measurement window itself
    sent1 = [r.snapshot()["sent"] for r in rooms]
    files_sent1 = [(await r.written())[0] for r in rooms]
    elapsed = time.monotonic() - t0
    cpu, own = cpu_seconds(pid) - c0, time.process_time() - own0
    await asyncio.sleep(IN_FLIGHT)  # the window's last frames arrive
    got1 = [r.snapshot()["got"] for r in rooms]
    files_got1 = [(await r.written())[1] for r in rooms]

    def ratios(s0: list[list[int]], s1: list[list[int]], g0: list[list[int]],
               g1: list[list[int]]) -> list[float]:
        out = []
        for room in zip(s0, s1, g0, g1, strict=True):
            for a, b, c, d in zip(*room, strict=True):
                if b > a:
                    out.append(min((d - c) / (b - a), 1.0))
        return out
    viewers = ratios(sent0, sent1, got0, got1)
    files = ratios(files_sent0, files_sent1, files_got0, files_got1)
    return {"cpu": 100 * cpu / elapsed, "own_cpu": 100 * own / elapsed,
            "worst": min(viewers, default=float("nan")),
            "mean": sum(viewers) / len(viewers) if viewers else float("nan"),
            "worst_file": min(files, default=float("nan"))}


async def run(url: str, pid: int, folder: Path, opts: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    settle = 1.5 if opts.smoke else 3.0
    small = clip(320, 240, 15, 10 if opts.smoke else 60)
    big = small if opts.smoke else clip(640, 480, 30, 240)
    async with KurentoClient(url) as kc:
        idle = await window(pid, [], opts.window)
        figures.update(baseline_idle_cpu_pct=idle["cpu"], baseline_idle_rss_mib=rss_kib(pid) / 1024)
        room = await two_party_call(kc, folder, 0, big)
        await asyncio.sleep(settle)  # past ICE, DTLS and the first keyframes
        one = await window(pid, [room], opts.window)
        figures.update({"call_640x480@30_cpu_pct": one["cpu"] - idle["cpu"],
                        "call_640x480@30_rss_mib": rss_kib(pid) / 1024
                        - figures["baseline_idle_rss_mib"],
                        "call_640x480@30_worst_delivery": one["worst"],
                        "call_640x480@30_worst_file_delivery": one["worst_file"],
                        "generator_cpu_pct_per_call": one["own_cpu"]})
        await room.close()
        rooms: list[Room] = []
        fitting = 0
        try:
            for n in range(1, opts.max_calls + 1):
                rooms.append(await two_party_call(kc, folder, n, big))
                await asyncio.sleep(settle)
                w = await window(pid, rooms, opts.window)
                worst = min(w["worst"], w["worst_file"])
                figures[f"calls_{n}_server_cpu_pct"] = w["cpu"]
                figures[f"calls_{n}_worst_delivery"] = round(worst, 4)
                if worst < FIT:
                    break
                fitting = n
        finally:
            for room in rooms:
                await room.close()
        figures["calls_fitting_640x480@30_at_98pct"] = fitting
        room = await conference(kc, folder, opts.parties, small)
        try:
            await asyncio.sleep(settle * 2)
            w = await window(pid, [room], opts.window)
        finally:
            await room.close()
        figures.update({f"conference_{opts.parties}_320x240@15_server_cpu_pct": w["cpu"],
                        f"conference_{opts.parties}_worst_delivery": w["worst"],
                        f"conference_{opts.parties}_mean_delivery": w["mean"],
                        f"conference_{opts.parties}_worst_file_delivery": w["worst_file"],
                        f"conference_{opts.parties}_generator_cpu_pct": w["own_cpu"]})
    return figures


async def _wait_port(port: int) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.1)  # another process starting: nothing to await


def main() -> None:
    opts = args(__doc__ or "", window=5.0, max_calls=12, parties=8)
    if opts.smoke:
        opts.window, opts.max_calls, opts.parties = 1.5, 1, 3
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mediaserver", "--port", str(port), "--recordings-root",
             tmp, "--log-level", "WARNING"])
        try:
            async def go() -> dict[str, Any]:
                await _wait_port(port)
                return await run(f"ws://127.0.0.1:{port}/kurento", server.pid, Path(tmp), opts)

            figures = asyncio.run(go())
        finally:
            server.terminate()
            server.wait()
    report("mediaserver_call", {"cores": os.cpu_count(), **figures})


if __name__ == "__main__":
    main()
