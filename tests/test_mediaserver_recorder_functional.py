"""RecorderEndpoint and its file: `Recording` means media is on disk, a file that cannot be
written raises Kurento's `Error` instead (the hub keeps such a call from going live)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kurento_ctl.client import KurentoClient
from kurento_ctl.events import Error, KurentoEvent, MediaFlowInStateChanged, Recording
from kurento_ctl.objects import MediaPipeline, RecorderEndpoint
from tests.helpers import within
from tests.media_fixtures import Peer, ffprobe, run_mediaserver


class RecorderEvents:
    """What one recorder raised, and how big its file was when `Recording` arrived."""

    def __init__(self, recorder: RecorderEndpoint, path: Path) -> None:
        self.recorder, self.path = recorder, path
        self.errors: list[Error] = []
        self.size_at_recording: int | None = None
        self.recording = asyncio.Event()
        self.errored = asyncio.Event()
        self.flowing = asyncio.Event()

    async def subscribe(self) -> None:
        await asyncio.gather(self.recorder.subscribe(Recording, self._recording),
                             self.recorder.subscribe(Error, self._error),
                             self.recorder.subscribe(MediaFlowInStateChanged, self._flow))

    def _recording(self, _: KurentoEvent) -> None:
        # Same machine, so the file is as the server left it when it raised the event
        # (or further on, never behind).
        self.size_at_recording = self.path.stat().st_size if self.path.is_file() else 0
        self.recording.set()

    def _error(self, event: KurentoEvent) -> None:
        assert isinstance(event, Error)
        self.errors.append(event)
        self.errored.set()

    def _flow(self, event: KurentoEvent) -> None:
        assert isinstance(event, MediaFlowInStateChanged)
        if event.state == "FLOWING":
            self.flowing.set()


async def test_an_unwritable_recording_raises_error_and_never_recording(tmp_path: Path) -> None:
    """Running as root, permissions do not stop a write; a directory in the file's place,
    a regular file in a folder's place and a full disk (/dev/full) do."""
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
                assert not events.recording.is_set(), name
                [error] = events.errors  # one Error, not one per frame
                assert (error.error_code, error.error_type) == (code, error_type), error
                assert str(targets[name]) in error.description, error.description
            # The full disk's recorder was recording and had media: only the failed write
            # stood between it and `Recording`.
            await within(seen["disk-full"].flowing.wait(), 10, "media at the disk-full recorder")
            assert not seen["disk-full"].recording.is_set()
            assert good.errors == []
            # `Recording` came once the file held bytes, not before its first write.
            assert good.size_at_recording is not None and good.size_at_recording > 0
            await asyncio.gather(*(rec.stop_and_wait() for rec in recorders))
        finally:
            await publisher.close()
            await pipeline.release()
    assert [s["codec_name"] for s in (await ffprobe(targets["good"]))["streams"]] == ["opus"]
    # A recorder that could not open its file left nothing in its place.
    assert not (tmp_path / "not-a-folder").is_dir()
    assert (tmp_path / "taken.webm").is_dir()
    assert list((tmp_path / "taken.webm").iterdir()) == []
