"""The embedded media server side by side with Janus (Debian's `janus`, VideoRoom plugin):
the same clips, the same calls, the same run; CPU per forwarded stream for both and the
ratio ours / Janus, without and with recording.

A call is two parties, each publishing the clip (VP8/Opus WEBM, played without decoding
as bench.mediaserver_call does) and receiving the other. Ours: one sendrecv peer
connection per party on a WebRtcEndpoint through the Kurento JSON-RPC, endpoints
connected crosswise, a RecorderEndpoint (WEBM) per party when recording. Janus: as its
clients do, a publisher (sendonly) and a subscriber (recvonly) handle per party in one
VideoRoom per call; recording is the room's `record` (Janus's own .mjr recorder).
A call forwards 4 streams (2 parties x audio and video). CPU is each server process's
(all threads) from /proc over the window, less its idle CPU, in % of one core; per
stream, and per delivered stream (divided by the mean delivery ratio too: a server that
drops media also spends less). This process's own CPU (the load) is reported per phase.

Both servers run at once; the phases alternate (ours, Janus, ours recording, Janus
recording) so machine load drifts over both alike. Both get ICE on the machine's own host
address: aiortc's ICE never offers 127.0.0.1.

    python -m bench.janus_compare [--calls 2] [--window 20] [--width 640 --height 480 --fps 30]
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiortc import RTCSessionDescription

from bench import janus_api
from bench.common import args, report
from bench.mediaserver_call import Peer, Room, _wait_port, clip, two_party_call, window
from kurento_ctl.client import KurentoClient
from tests.services import free_port

STREAMS_PER_CALL = 4


class JanusRoom(Room):
    """A VideoRoom of two publishers, each subscribed to by the other party."""

    def __init__(self, janus: janus_api.Janus, room_id: int, rec_dir: Path | None) -> None:
        super().__init__()
        self.janus = janus
        self.room_id = room_id
        self.rec_dir = rec_dir
        self.handles: list[int] = []
        self.feeds: dict[int, Peer] = {}

    def totals(self) -> dict[int, dict[str, int]]:
        """Frames each publisher (by feed) sent, per kind, since it started."""
        return {feed: {k: p.tracks[k].sent for k in ("audio", "video")}
                for feed, p in self.feeds.items()}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.peers))
        await self.janus.message(self.handles[0], {"request": "destroy", "room": self.room_id})
        for handle in self.handles:
            await self.janus.detach(handle)


async def janus_call(janus: janus_api.Janus, rec_dir: Path | None, n: int,
                     source: Path) -> JanusRoom:
    """Two parties in VideoRoom `n`: both publish, then each subscribes to the other."""
    room_id = 1000 + n
    create: dict[str, Any] = {"request": "create", "room": room_id, "publishers": 2,
                              "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0}
    if rec_dir is not None:
        create.update(record=True, rec_dir=str(rec_dir))
    room = JanusRoom(janus, room_id, rec_dir)
    feeds = []
    publishers = [Peer(source, receive=False), Peer(source, receive=False)]
    for i, publisher in enumerate(publishers):
        handle = await janus.attach()
        room.handles.append(handle)
        if i == 0:
            await janus.message(handle, create)
        joined, _ = await janus.message(handle, {"request": "join", "ptype": "publisher",
                                                 "room": room_id, "display": f"p{i}"})
        feeds.append(int(joined["id"]))
        room.feeds[feeds[-1]] = publisher
        await publisher.pc.setLocalDescription(await publisher.pc.createOffer())
        offer = {"type": "offer", "sdp": publisher.pc.localDescription.sdp, "trickle": False}
        _, answer = await janus.message(handle, {"request": "publish", "audio": True,
                                                 "video": True}, offer)
        assert answer is not None, "Janus answered the publish without SDP"
        await publisher.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        room.peers.append(publisher)
    for handle in room.handles:
        await janus.webrtc_up(handle)
    for i, feed in enumerate(reversed(feeds)):
        viewer = Peer(None, receive=False)
        handle = await janus.attach()
        room.handles.append(handle)
        _, offer_jsep = await janus.message(handle, {
            "request": "join", "ptype": "subscriber", "room": room_id,
            "streams": [{"feed": feed}]})
        assert offer_jsep is not None, "Janus sent no offer to the subscriber"
        await viewer.pc.setRemoteDescription(RTCSessionDescription(offer_jsep["sdp"], "offer"))
        await viewer.pc.setLocalDescription(await viewer.pc.createAnswer())
        answer = {"type": "answer", "sdp": viewer.pc.localDescription.sdp, "trickle": False}
        await janus.message(handle, {"request": "start", "room": room_id}, answer)
        room.peers.append(viewer)
        room.links.append((publishers[i], viewer))
    return room


def janus_file_delivery(rooms: list[JanusRoom], sent: list[dict[int, dict[str, int]]]) -> float:
    """Worst frames-in-.mjr over frames-sent of any publisher's audio or video, over the
    whole call (Janus tells nothing of its recorder while it records). Janus names a
    recording videoroom-<room>-user-<feed>-<time>-<kind>-<mid>.mjr."""
    worst = 1.0
    for room, totals in zip(rooms, sent, strict=True):
        assert room.rec_dir is not None
        for feed, by_kind in totals.items():
            written = {"audio": 0, "video": 0}
            for path in room.rec_dir.glob(f"videoroom-{room.room_id}-user-{feed}-*.mjr"):
                kind, frames = janus_api.count_mjr(path)
                written[kind] += frames
            for kind, count in by_kind.items():
                worst = min(worst, written[kind] / max(count, 1))
    return worst


async def phase(name: str, pid: int, idle: float, make: Callable[[int], Awaitable[Room]],
                calls: int, opts: Any,
                figures: dict[str, Any]) -> None:
    """`calls` calls made by `make(n)`, settled, measured over the window, closed."""
    rooms: list[Room] = []
    try:
        for n in range(calls):
            rooms.append(await make(n))
        await asyncio.sleep(opts.settle)  # past ICE, DTLS and the first keyframes
        w = await window(pid, rooms, opts.window)
    finally:
        sent = [r.totals() for r in rooms if isinstance(r, JanusRoom)]
        for room in rooms:
            await room.close()
    streams = calls * STREAMS_PER_CALL
    figures[f"{name}_cpu_pct"] = w["cpu"]
    figures[f"{name}_cpu_pct_per_stream"] = (w["cpu"] - idle) / streams
    figures[f"{name}_worst_delivery"] = w["worst"]
    figures[f"{name}_mean_delivery"] = w["mean"]
    # A server that drops media also spends less: the cost of what it did deliver.
    figures[f"{name}_cpu_pct_per_delivered_stream"] = (w["cpu"] - idle) / (streams * w["mean"])
    figures[f"{name}_generator_cpu_pct"] = w["own_cpu"]
    figures[f"{name}_load_average_1m"] = os.getloadavg()[0]
    if name == "ours_rec":
        figures[f"{name}_worst_file_delivery"] = w["worst_file"]
    if name == "janus_rec":
        janus_rooms = [r for r in rooms if isinstance(r, JanusRoom)]
        figures[f"{name}_worst_file_delivery"] = janus_file_delivery(janus_rooms, sent)


async def run(ours_url: str, ours_pid: int, janus_url: str, janus_pid: int, tmp: Path,
              opts: Any) -> dict[str, Any]:
    source = clip(opts.width, opts.height, opts.fps, opts.clip_seconds)
    figures: dict[str, Any] = {"calls": opts.calls, "streams": opts.calls * STREAMS_PER_CALL,
                               "video": f"{opts.width}x{opts.height}@{opts.fps}"}
    ours_rec, janus_rec = tmp / "ours-rec", tmp / "janus-rec"
    ours_rec.mkdir()
    janus_rec.mkdir()
    async with KurentoClient(ours_url) as kc, janus_api.Janus(janus_url) as janus:
        idle = await asyncio.gather(window(ours_pid, [], opts.idle),
                                    window(janus_pid, [], opts.idle))
        figures["ours_idle_cpu_pct"], figures["janus_idle_cpu_pct"] = idle[0]["cpu"], idle[1]["cpu"]
        load0 = os.getloadavg()[0]
        for rec in (False, True):
            suffix = "_rec" if rec else ""

            def ours(n: int, rec: bool = rec) -> Awaitable[Room]:
                return two_party_call(kc, ours_rec if rec else None, n, source)

            def theirs(n: int, rec: bool = rec) -> Awaitable[Room]:
                # Each phase its own rooms: a destroyed room's number is not reused.
                return janus_call(janus, janus_rec if rec else None, n + 100 * rec, source)

            await phase(f"ours{suffix}", ours_pid, idle[0]["cpu"], ours, opts.calls, opts,
                        figures)
            await phase(f"janus{suffix}", janus_pid, idle[1]["cpu"], theirs, opts.calls, opts,
                        figures)
        figures["load_average_1m_start"], figures["load_average_1m_end"] = load0, os.getloadavg()[0]
    for suffix in ("", "_rec"):
        for per in ("stream", "delivered_stream"):
            ratio = "" if per == "stream" else "_delivered"
            figures[f"ratio_ours_to_janus{suffix}{ratio}"] = (
                figures[f"ours{suffix}_cpu_pct_per_{per}"]
                / figures[f"janus{suffix}_cpu_pct_per_{per}"])
    return figures


def main() -> None:
    opts = args(__doc__ or "", calls=2, window=20.0, idle=3.0, settle=3.0, width=640,
                height=480, fps=30, clip_seconds=240)
    if opts.smoke:
        opts.calls, opts.window, opts.idle, opts.settle = 1, 2.0, 1.0, 1.5
        opts.width, opts.height, opts.fps, opts.clip_seconds = 320, 240, 15, 60
    if shutil.which("janus") is None:
        sys.exit("janus is not installed (./dev installs it: apt-get install janus)")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ours_port, janus_port = free_port(), free_port()
        ours = subprocess.Popen(
            [sys.executable, "-m", "mediaserver", "--port", str(ours_port), "--recordings-root",
             name, "--log-level", "WARNING"])
        janus = janus_api.start(tmp / "janus-conf", janus_port, tmp / "janus.log")
        try:
            async def go() -> dict[str, Any]:
                await asyncio.gather(_wait_port(ours_port), _wait_port(janus_port))
                return await run(f"ws://127.0.0.1:{ours_port}/kurento", ours.pid,
                                 f"http://127.0.0.1:{janus_port}/janus", janus.pid, tmp, opts)

            figures = asyncio.run(go())
        except BaseException:
            log = tmp / "janus.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-3000:])
            raise
        finally:
            for proc in (ours, janus):
                proc.terminate()
                proc.wait()
    report("janus_compare", {"cores": os.cpu_count(), **figures})


if __name__ == "__main__":
    main()
