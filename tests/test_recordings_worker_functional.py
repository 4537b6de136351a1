"""The recording worker on real WEBM files (ffmpeg), ffprobe and a real redis-server: it
retries through a hung Redis instead of dropping the job, flags files the recorder did not
finish or reported failing, judges a frozen participant by when its media stopped, and
publishes each piece of news once however often a job runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from recordings.catalog import Catalog
from recordings.worker import DONE_KEPT, RecordingWorker
from tests.helpers import wait_until, within
from tests.services import RedisServer, require_binary, run_redis

T0 = 1_800_000_000.0


async def webm(path: Path, seconds: float, *, streamed: bool = False) -> None:
    """A real WEBM of `seconds` (VP8 + Opus). `streamed`: written to a pipe, as a recorder
    killed mid-call leaves it, with no duration or seek index in its header."""
    args = [require_binary("ffmpeg"), "-v", "error", "-f", "lavfi", "-i",
            f"testsrc=size=160x120:rate=10:duration={seconds}", "-f", "lavfi", "-i",
            f"sine=duration={seconds}", "-c:v", "libvpx", "-c:a", "libopus", "-f", "webm"]
    proc = await asyncio.create_subprocess_exec(
        *args, "-y", "pipe:1" if streamed else str(path),
        stdout=asyncio.subprocess.PIPE if streamed else None)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    if streamed:
        await asyncio.to_thread(path.write_bytes, out)


def snapshot(call_id: str, ended: float, *events: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "kind": "consultation", "state": "ended", "createdAt": T0,
            "endedAt": ended, "participants": [{"id": "pat-1", "name": "P",
                                                "role": "patient"}],
            "timeline": [{"at": T0, "event": "recording", "participant": "pat-1"}, *events],
            "recordings": ["pat-1.webm"]}


class Published:
    def __init__(self) -> None:
        self.events: dict[str, tuple[str, dict[str, Any]]] = {}
        self.calls = 0

    async def __call__(self, event: str, data: dict[str, Any], event_id: str) -> None:
        self.calls += 1
        self.events.setdefault(event_id, (event, data))  # as the outbox: once per id


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def one_file(tmp_path: Path, call_id: str, seconds: float, *, streamed: bool = False
                   ) -> Path:
    folder = tmp_path / "rec" / "2027" / "01" / "15" / call_id
    folder.mkdir(parents=True)
    await webm(folder / "pat-1.webm", seconds, streamed=streamed)
    return folder


async def test_a_hung_redis_delays_the_job_instead_of_dropping_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis stopped the job fails, waits and runs again; once Redis is back the
    metadata is indexed and the news published (the old worker logged and dropped it)."""
    folder = await one_file(tmp_path, "call-hang", 2.0)
    with run_redis(tmp_path / "redis") as server:
        redis = aioredis.Redis.from_url(server.url, socket_timeout=0.3,
                                        socket_connect_timeout=0.3)
        published = Published()
        worker = RecordingWorker(Catalog(tmp_path / "rec", redis), published,
                                 compose_files=False, retry_base=0.05, retry_cap=0.2)
        worker.start()
        try:
            await redis.ping()
            with caplog.at_level(logging.ERROR), frozen(server.pid):
                worker.submit(folder, snapshot("call-hang", T0 + 2.0))
                await wait_until(lambda: sum("attempt 2" in r.getMessage()
                                             for r in caplog.records) > 0, timeout=20)
                assert not worker.done["call-hang"].is_set()
            await within(worker.wait("call-hang"), 30, "the retried job")
            indexed = await Catalog(tmp_path / "rec", redis).get("call-hang")
        finally:
            await worker.close()
            await redis.aclose()
    assert indexed is not None and indexed["state"] == "verified", indexed
    assert [e for e, _ in published.events.values()] == ["recording.ready"]


async def test_unfinished_and_failed_files_are_flagged_not_ready(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """A file with no duration (its recorder was killed) and a whole-looking file whose
    recorder reported NO_SPACE are both flagged, with the recorder's own words."""
    worker = RecordingWorker(Catalog(tmp_path / "rec", redis_client), Published(),
                             compose_files=False)
    cut = await one_file(tmp_path, "call-cut", 2.0, streamed=True)
    meta = await worker.finalize(cut, snapshot("call-cut", T0 + 2.0))
    assert meta["state"] == "flagged"
    assert meta["files"][0]["duration"] is None
    assert "no duration" in meta["files"][0]["problem"]
    full = await one_file(tmp_path, "call-full", 2.0)
    error = ("recorder: RESOURCE_ERROR_NO_SPACE_LEFT: Could not write to resource: "
             "No space left on device")
    meta = await worker.finalize(full, snapshot("call-full", T0 + 2.0, {
        "at": T0 + 1.9, "event": "media-error", "participant": "pat-1", "error": error}))
    assert meta["state"] == "flagged" and meta["files"][0]["duration"] > 1.5
    assert meta["files"][0]["problem"] == error
    assert meta["problems"] == [f"pat-1.webm: {error}"]


def flow(at: float, kind: str, flowing: bool) -> dict[str, Any]:
    return {"at": at, "event": "flow", "participant": "pat-1", "target": "publish",
            "direction": "in", "kind": kind, "flowing": flowing}


async def test_a_frozen_participant_is_judged_by_when_its_media_stopped(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Media that stopped flowing in at 2 s of a 30 s call (browser frozen, socket open)
    makes a 2 s file right; media that came back does not excuse a short file."""
    worker = RecordingWorker(Catalog(tmp_path / "rec", redis_client), Published(),
                             compose_files=False)
    folder = await one_file(tmp_path, "call-frozen", 2.0)
    stopped = [flow(T0 + 0.2, "audio", True), flow(T0 + 0.2, "video", True),
               flow(T0 + 2.1, "audio", False), flow(T0 + 2.2, "video", False)]
    meta = await worker.finalize(folder, snapshot("call-frozen", T0 + 30.0, *stopped))
    assert meta["state"] == "verified", meta["problems"]
    resumed = [*stopped, flow(T0 + 25.0, "video", True)]
    meta = await worker.finalize(folder, snapshot("call-frozen", T0 + 30.0, *resumed))
    assert meta["state"] == "flagged" and "shorter" in meta["files"][0]["problem"]


async def test_a_job_run_twice_publishes_its_news_once(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Recovered or retried jobs give every event the id of what it says."""
    published = Published()
    worker = RecordingWorker(Catalog(tmp_path / "rec", redis_client), published,
                             compose_files=False)
    folder = await one_file(tmp_path, "call-twice", 2.0)
    snap = {**snapshot("call-twice", T0 + 2.0), "recordings": ["doc-1.webm", "pat-1.webm"]}
    await worker.finalize(folder, snap)  # doc-1's file never appeared: failed, and ready
    await worker.finalize(folder, snap)  # run again, as after a failure midway
    assert published.calls == 4
    assert sorted(e for e, _ in published.events.values()) == ["recording.failed",
                                                               "recording.ready"]


async def test_finished_jobs_are_remembered_up_to_a_bound(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """`wait` works for recent calls, and the worker does not keep one Event per call for
    ever (the soak found it growing by one a call)."""
    worker = RecordingWorker(Catalog(tmp_path / "rec", redis_client), Published(),
                             compose_files=False, queue_size=DONE_KEPT + 20)
    worker.start()
    try:
        ids = [f"call-{i}" for i in range(DONE_KEPT + 10)]
        for call_id in ids:
            folder = tmp_path / "rec" / "2027" / "01" / "15" / call_id
            folder.mkdir(parents=True)
            worker.submit(folder, {"id": call_id})
        await within(worker.wait(ids[-1]), 60, "the last job")
    finally:
        await worker.close()
    assert len(worker.done) == DONE_KEPT
    assert set(worker.done) == set(ids[-DONE_KEPT:])
