"""RecorderEndpoint and its file, timed as KMS 7.3 does (KMS-SOURCE-NOTES §5): `Recording`
means every kind reached the muxer, before bytes are known to be on disk; a file that
cannot be opened raises `Error` 6 and never `Recording`; a full
disk raises `Recording`, then `Error` 14 at the write (the hub fails such a call)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kurento_ctl.client import KurentoClient
from kurento_ctl.events import Error, KurentoEvent, MediaFlowInStateChanged, Recording
from kurento_ctl.objects import MediaPipeline, RecorderEndpoint
from tests.helpers import within
from tests.media_fixtures import Peer, ffprobe, run_mediaserver


class RecorderEvents:
    """What one recorder raised, in order."""

    def __init__(self, recorder: RecorderEndpoint, path: Path) -> None:
        self.recorder, self.path = recorder, path
        self.errors: list[Error] = []
        self.order: list[str] = []
        self.recording = asyncio.Event()
        self.errored = asyncio.Event()
        self.flowing = asyncio.Event()

    async def subscribe(self) -> None:
        await asyncio.gather(self.recorder.subscribe(Recording, self._recording),
                             self.recorder.subscribe(Error, self._error),
                             self.recorder.subscribe(MediaFlowInStateChanged, self._flow))

    def _recording(self, _: KurentoEvent) -> None:
        self.order.append("Recording")
        self.recording.set()

    def _error(self, event: KurentoEvent) -> None:
        assert isinstance(event, Error)
        self.order.append("Error")
        self.errors.append(event)
        self.errored.set()


    def _flow(self, event: KurentoEvent) -> None:
        assert isinstance(event, MediaFlowInStateChanged)
        if event.state == "FLOWING":
            self.flowing.set()


async def test_unwritable_recordings_raise_kurentos_errors_at_kurentos_moments(
        tmp_path: Path) -> None:
    """Running as root, permissions do not stop a write; a directory in the file's place
    and a regular file in a folder's place fail the open (Error 6, never
    Recording), a full disk (/dev/full) fails the first write (Recording, then Error 14)."""
    (tmp_path / "taken.webm").mkdir()
    (tmp_path / "not-a-folder").write_bytes(b"x")
    targets = {"directory": tmp_path / "taken.webm",
               "parent-is-a-file": tmp_path / "not-a-folder" / "a.webm",
               "disk-full": Path("/dev/full"),
               "good": tmp_path / "good.webm"}
    expected = {"directory": (6, "RESOURCE_ERROR_OPEN"),
                "parent-is-a-file": (6, "RESOURCE_ERROR_OPEN"),
                "disk-full": (14, "RESOURCE_ERROR_NO_SPACE_LEFT")}
    # No recordings root: /dev/full is outside any folder a test could own.
    async with run_mediaserver() as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep = await pipeline.create_webrtc_endpoint()
        recorders = await asyncio.gather(*(
            pipeline.create_recorder_endpoint(path.as_uri(), media_profile="WEBM_AUDIO_ONLY")
            for path in targets.values()))
        seen = {name: RecorderEvents(rec, path)
                for (name, path), rec in zip(targets.items(), recorders, strict=True)}
        await asyncio.gather(*(s.subscribe() for s in seen.values()))
        await asyncio.gather(*(ep.connect(rec, "AUDIO") for rec in recorders))
        await asyncio.gather(*(rec.record() for rec in recorders))
        publisher = Peer(video=False)
        try:
            await publisher.accept(await ep.process_offer(await publisher.offer()))
            good = seen["good"]
            await within(good.recording.wait(), 15, "Recording on the good recorder")
            for name, (code, error_type) in expected.items():
                events = seen[name]
                await within(events.errored.wait(), 10, f"Error on the {name} recorder")
                [error] = events.errors  # one Error, not one per frame
                assert (error.error_code, error.error_type) == (code, error_type), error
                assert str(targets[name]) in error.description, error.description
            for name in ("directory", "parent-is-a-file"):
                assert seen[name].order == ["Error"], (name, seen[name].order)
            # The full disk's muxer started (KMS: the header prerolled, nothing written
            # yet), then its first write failed.
            await within(seen["disk-full"].flowing.wait(), 10, "media at the disk-full recorder")
            assert seen["disk-full"].order == ["Recording", "Error"], seen["disk-full"].order
            assert good.errors == [] and good.order == ["Recording"]
            await asyncio.gather(*(rec.stop_and_wait() for rec in recorders))
        finally:
            await publisher.close()
            await pipeline.release()
    assert [s["codec_name"] for s in (await ffprobe(targets["good"]))["streams"]] == ["opus"]
    # A recorder that could not open its file left nothing in its place.
    assert not (tmp_path / "not-a-folder").is_dir()
    assert (tmp_path / "taken.webm").is_dir()
    assert list((tmp_path / "taken.webm").iterdir()) == []
