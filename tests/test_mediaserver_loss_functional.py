"""No silent loss: a sink that cannot keep up is reported (counters, MediaFlowIn
NOT_FLOWING) without taking media from the others, and media a starved server never
received turns the publisher's flow NOT_FLOWING and leaves holes the verification names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path

from kurento_ctl.client import KurentoClient
from kurento_ctl.events import KurentoEvent, MediaFlowInStateChanged, MediaFlowOutStateChanged
from kurento_ctl.objects import MediaPipeline
from recordings import continuity
from tests.forward_fixtures import Publisher
from tests.helpers import wait_until, within
from tests.media_fixtures import Peer, mediaserver_process, run_mediaserver
from tests.services import free_port


class Flows:
    """Flow events of one element, awaitable by (kind, state)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def note(self, event: KurentoEvent) -> None:
        assert isinstance(event, (MediaFlowInStateChanged, MediaFlowOutStateChanged))
        self.seen.append((event.media_type, event.state))
        self._changed.set()

    async def wait(self, entry: tuple[str, str], since: int = 0, timeout: float = 20) -> int:
        """Until `entry` arrived after position `since`; returns where."""
        async def until() -> int:
            while entry not in self.seen[since:]:
                self._changed.clear()
                await self._changed.wait()
            return self.seen.index(entry, since)
        try:
            return await within(until(), timeout, f"{entry}")
        except AssertionError:
            raise AssertionError(f"{entry} not seen; seen {self.seen[since:]}") from None


async def test_a_recorder_that_cannot_write_drops_says_so_and_starves_nobody(
        tmp_path: Path) -> None:
    """Its file is a FIFO nobody reads: the write blocks, the recorder's taps overflow
    (dropped frames in getStats, MediaFlowIn NOT_FLOWING), the viewer keeps all its audio;
    once the FIFO is read again the recorder is FLOWING again."""
    fifo = tmp_path / "stuck.webm"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the open for writing succeeds
    drain = threading.Event()
    stop = threading.Event()

    def drainer() -> None:
        drain.wait()
        with contextlib.suppress(OSError):
            os.set_blocking(reader, True)
            while not stop.is_set() and os.read(reader, 65536):
                pass

    thread = threading.Thread(target=drainer, daemon=True)
    thread.start()
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_pub, ep_view = await asyncio.gather(pipeline.create_webrtc_endpoint(),
                                               pipeline.create_webrtc_endpoint())
        recorder = await pipeline.create_recorder_endpoint(fifo.as_uri())
        flows = Flows()
        await recorder.subscribe(MediaFlowInStateChanged, flows.note)
        publisher, viewer = Publisher(640, 480, 30), Peer(audio=False, video=False)
        for kind in ("audio", "video"):
            viewer.pc.addTransceiver(kind, direction="recvonly")
        try:
            await asyncio.gather(ep_pub.connect(ep_view), ep_pub.connect(recorder))
            await recorder.record()
            for peer, ep in ((publisher, ep_pub), (viewer, ep_view)):
                await peer.accept(await ep.process_offer(await peer.offer()))
            await flows.wait(("AUDIO", "FLOWING"))
            heard = viewer.received["audio"]
            lost_at = await flows.wait(("AUDIO", "NOT_FLOWING"), timeout=30)
            # The viewer heard on, at 50 frames a second, while the recorder was stuck.
            assert viewer.received["audio"] - heard >= 100, viewer.received
            stats = await recorder.get_stats()
            dropped = {s["mediaType"]: s["framesDropped"] for s in stats.values()}
            assert dropped["AUDIO"] > 0 and dropped["VIDEO"] > 0, stats
            drain.set()
            await flows.wait(("AUDIO", "FLOWING"), since=lost_at + 1, timeout=30)
            await recorder.stop_and_wait()
        finally:
            drain.set()  # a writer still blocked on the FIFO lets the release finish
            await asyncio.gather(publisher.close(), viewer.close())
            await pipeline.release()
            stop.set()
            os.close(reader)


async def test_media_lost_while_the_server_was_starved_is_reported_and_leaves_named_holes(
        tmp_path: Path) -> None:
    """The server process is stopped for 8 s (SIGSTOP: a host starved of CPU): the
    publisher's packets overflow the server's socket buffer (shorter stops fit in it and
    lose nothing), its endpoint's MediaFlowOut turns NOT_FLOWING, and the file's
    verification names the hole."""
    port = free_port()
    path = tmp_path / "starved.webm"
    async with mediaserver_process(port, tmp_path) as proc, \
            KurentoClient(f"ws://127.0.0.1:{port}/kurento") as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_pub = await pipeline.create_webrtc_endpoint()
        recorder = await pipeline.create_recorder_endpoint(path.as_uri())
        flows = Flows()
        await ep_pub.subscribe(MediaFlowOutStateChanged, flows.note)
        publisher = Publisher(640, 480, 30)
        try:
            await ep_pub.connect(recorder)
            await recorder.record()
            await publisher.accept(await ep_pub.process_offer(await publisher.offer()))
            await flows.wait(("AUDIO", "FLOWING"))
            await flows.wait(("VIDEO", "FLOWING"))
            since = len(flows.seen)
            proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(8)  # the starvation itself: its length is the test
            proc.send_signal(signal.SIGCONT)
            await flows.wait(("AUDIO", "NOT_FLOWING"), since=since)
            await recorder.stop_and_wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            await publisher.close()
            await pipeline.release()
    await wait_until(path.exists, timeout=5)
    problem = await continuity.check(path)
    assert problem is not None and "audio" in problem and " at 00:" in problem, problem
