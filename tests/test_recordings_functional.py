"""Recordings after real calls: verified files, metadata with checksums, the composed
consultation, downloads with HTTP Range, retention, the disk watermark, and recovery after
the signalling process is SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest

from mis.history import STORE
from mis.webhooks import OUTBOX
from recordings.compose import Stream, compose
from recordings.http import judge_range
from recordings.worker import implausible
from signaling.call import CallKind
from telemed.app import RECORDINGS
from tests.helpers import wait_until
from tests.hub_fixtures import (
    API_KEY,
    JWT_SECRET,
    CallClient,
    Service,
    clients_for,
    go_live,
    run_service,
)
from tests.media_fixtures import ffprobe, mediaserver_process, run_mediaserver
from tests.services import RedisServer, free_port
from tests.test_cli_functional import poll_ready
from tests.webhook_receiver import run_receiver

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SECRET = "hook-secret-" + "r" * 20


def hooks(url: str) -> dict[str, str]:
    return {"TELEMED_WEBHOOKS_ENDPOINTS": url, "TELEMED_WEBHOOKS_SECRET": SECRET,
            "TELEMED_WEBHOOKS_RETRY_BASE": "0.05", "TELEMED_WEBHOOKS_RETRY_CAP": "0.2"}


async def recorded_call(service: Service, seconds: float = 1.5) -> str:
    call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                          ("doc-1", "D", "doctor")])
    clients = clients_for(service, call)
    try:
        await go_live(service, call, clients)
        await asyncio.sleep(seconds)  # media to record: the length is what is checked
        await clients["doc-1"].request("end")
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))
    await asyncio.wait_for(service.app[RECORDINGS].wait(call.id), 60)
    return call.id


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask (0): privacy must come from the modes the code sets."""
    earlier = os.umask(0)
    try:
        yield
    finally:
        os.umask(earlier)


async def test_recordings_and_the_journal_are_private_whatever_the_umask(
    tmp_path: Path, redis_server: RedisServer, open_umask: None
) -> None:
    """Under umask 0, every file a recorded call leaves (streams written by the media
    server, metadata, the composed file) is 0600, every folder the call created 0700, and
    the call-events journal 0600 in a 0700 data folder."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,),
            env={"TELEMED_RECORDINGS_COMPOSE": "true"}) as service:
        call_id = await recorded_call(service)
        root = service.settings.recordings_path
        (folder,) = [p for p in root.glob("*/*/*/*") if p.name == call_id]
        data = service.settings.data_path
    files = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert {"doc-1.webm", "pat-1.webm", "metadata.json", "consultation.webm"} <= set(files)
    assert set(files.values()) == {0o600}, files
    levels = [folder, *list(folder.parents)[:3]]  # the call's, the day's, month's, year's
    modes = {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in levels}
    assert modes == dict.fromkeys(modes, 0o700), modes
    assert (data / "call-events.journal").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(("header", "size", "verdict"), [
    (None, 100, None), ("bytes=0-9", 100, "bytes=0-9"), ("bytes=90-", 100, "bytes=90-99"),
    ("bytes=-10", 100, "bytes=90-99"), ("bytes=-500", 100, "bytes=0-99"),
    ("bytes=50-5000", 100, "bytes=50-99"), ("BYTES= 5-6 ", 100, "bytes=5-6"),
    ("bytes=100-", 100, "unsatisfiable"), ("bytes=-0", 100, "unsatisfiable"),
    ("bytes=-5", 0, "unsatisfiable"), ("bytes=6-5", 100, "unsatisfiable"),
    ("bytes=x-", 100, "unsatisfiable"), ("bytes=-", 100, "unsatisfiable"),
    ("bytes=0-1,5-6", 100, None), ("bytes=0-1,x", 100, "unsatisfiable"),
    ("bytes=200-300,400-", 100, "unsatisfiable"), ("items=0-1", 100, None),
    ("garbage", 100, None),
])
def test_range_headers_are_judged_as_rfc_9110_says(
    header: str | None, size: int, verdict: str | None
) -> None:
    """A Range header is served, clamped, refused as unsatisfiable or ignored as RFC 9110 says."""
    assert judge_range(header, size) == verdict


def test_a_duration_must_fit_the_time_the_stream_was_recorded() -> None:
    """A file's duration must match its recorded span within a few seconds, or it is flagged."""
    assert implausible(58.0, 100.0, 160.0) is None
    assert implausible(64.0, 100.0, 160.0) is None  # a few seconds of slack
    assert "longer" in str(implausible(70.0, 100.0, 160.0))
    assert "shorter" in str(implausible(20.0, 100.0, 160.0))
    assert implausible(0.5, 100.0, 101.5) is None  # short calls are short


async def run(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-500:]
    return out


async def test_a_conference_is_composed_as_a_grid_aligned_by_start_times(
    tmp_path: Path
) -> None:
    """A conference is composed as one grid with mixed audio, each tile starting with its stream."""
    streams = []
    for i, offset in enumerate((0.0, 0.5, 1.0)):
        path = tmp_path / f"p{i}.webm"
        await run("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                  "testsrc=size=320x240:rate=15:d=1", "-f", "lavfi", "-i",
                  f"sine=frequency={440 + 110 * i}:duration=1", "-c:v", "libvpx",
                  "-c:a", "libopus", str(path))
        streams.append(Stream(path, offset, audio=True, video=True))
    out = tmp_path / "consultation.webm"
    assert await compose(streams, out) is None
    info = await ffprobe(out)
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert len(video) == len(audio) == 1  # one picture, the voices mixed
    assert (video[0]["width"], video[0]["height"]) == (1280, 720)  # 2x2 tiles
    assert abs(float(info["format"]["duration"]) - 2.0) < 0.4  # the last joined at 1 s

    async def brightness(at: float, x: int, y: int) -> float:
        """Mean luma of one tile at one moment."""
        raw = await run("ffmpeg", "-v", "error", "-ss", str(at), "-i", str(out),
                        "-frames:v", "1", "-vf", f"crop=640:360:{x}:{y}", "-f", "rawvideo",
                        "-pix_fmt", "gray", "-")
        return sum(raw) / len(raw)

    # The third participant (bottom left) is black until its stream starts at 1 s.
    assert await brightness(0.3, 0, 360) < 30
    assert await brightness(1.5, 0, 360) > 60
    assert await brightness(0.3, 0, 0) > 60
    assert await brightness(1.5, 640, 360) < 30  # the empty fourth tile


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_call_leaves_verified_streams_metadata_and_a_composed_file(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A call leaves owner-only files checked against metadata, and a composed side-by-side file."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,),
            env={"TELEMED_RECORDINGS_COMPOSE": "true"}) as service:
        call_id = await recorded_call(service)
        (folder,) = [p for p in service.settings.recordings_path.glob("*/*/*/*")
                     if p.name == call_id]
        meta = json.loads((folder / "metadata.json").read_text())
        async with aiohttp.ClientSession() as http, http.get(
                f"{service.url}/api/v1/recordings/{call_id}", headers=AUTH) as r:
            indexed = await r.json()
    assert meta["state"] == "ready" and meta["problems"] == []
    # Medical data: what the service itself writes is readable by its own user only.
    assert (folder / "metadata.json").stat().st_mode & 0o777 == 0o600
    assert (folder / "consultation.webm").stat().st_mode & 0o777 == 0o600
    assert indexed["files"] == meta["files"]
    assert [f["name"] for f in meta["files"]] == ["doc-1.webm", "pat-1.webm"]
    for f in meta["files"]:
        assert f["sha256"] == sha256(folder / f["name"])
        assert f["size"] == (folder / f["name"]).stat().st_size
        assert f["streams"] == ["audio", "video"] and f["duration"] > 1.0
        assert f["startedAt"] is not None
        assert f["startedAt"] < f["endedAt"] <= meta["endedAt"]
    composed = await ffprobe(folder / "consultation.webm")
    video = [s for s in composed["streams"] if s["codec_type"] == "video"]
    audio = [s for s in composed["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 1 and len(audio) == 1
    assert (video[0]["width"], video[0]["height"]) == (1280, 360)  # two tiles side by side
    longest = max(f["duration"] for f in meta["files"])
    assert abs(float(composed["format"]["duration"]) - longest) < 1.5
    assert meta["composed"]["sha256"] == sha256(folder / "consultation.webm")
    assert sorted(p["role"] for p in meta["participants"]) == ["doctor", "patient"]


@pytest.fixture
async def recorded(tmp_path: Path, redis_server: RedisServer, redis_client: Any) -> Any:
    """One recorded call, with a Redis emptied first (other tests' recordings are indexed
    there too and retention would see them)."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,),
            env={"TELEMED_RECORDINGS_RETENTION_DAYS": "1e-9"}) as service:
        call_id = await recorded_call(service, seconds=1.0)
        yield service, call_id


async def test_downloads_honour_ranges_and_refuse_strangers(recorded: Any) -> None:
    """Downloads honour byte ranges; without the API key or a signed link nothing is served."""
    service, call_id = recorded
    (path,) = service.settings.recordings_path.rglob("pat-1.webm")
    data = path.read_bytes()
    size = len(data)
    url = f"{service.url}/api/v1/recordings/{call_id}/files/pat-1.webm"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=AUTH) as r:
            assert r.status == 200 and await r.read() == data
            assert r.headers["Accept-Ranges"] == "bytes"
        cases = [("bytes=0-99", 0, 99), (f"bytes={size // 2}-{size // 2 + 9}", size // 2,
                                          size // 2 + 9), ("bytes=-50", size - 50, size - 1),
                 (f"bytes={size - 10}-", size - 10, size - 1)]
        for header, first, last in cases:
            async with http.get(url, headers={**AUTH, "Range": header}) as r:
                assert r.status == 206, header
                assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
                assert await r.read() == data[first:last + 1]
        for header in (f"bytes={size + 10}-", "bytes=-0", "bytes=abc", "bytes=9-2", "bytes=",
                       f"bytes={size}-{size + 5}, {size + 9}-"):
            async with http.get(url, headers={**AUTH, "Range": header}) as r:
                assert r.status == 416, header
                assert r.headers["Content-Range"] == f"bytes */{size}"
        # Another unit must be ignored; several ranges are answered with the whole file.
        for header in ("items=0-5", "bytes=0-9, 20-29"):
            async with http.get(url, headers={**AUTH, "Range": header}) as r:
                assert r.status == 200, header
                assert await r.read() == data
        async with http.get(url, headers={**AUTH, "Range": f"bytes=10-{size * 2}"}) as r:
            assert (r.status, r.headers["Content-Range"]) == (206, f"bytes 10-{size - 1}/{size}")
            assert await r.read() == data[10:]
        async with http.get(url) as r:
            assert r.status == 401
        for name in ("..%2F..%2Fmetadata.json", "metadata.json", "x.webm", "%2Fetc%2Fpasswd"):
            async with http.get(f"{service.url}/api/v1/recordings/{call_id}/files/{name}",
                                headers=AUTH) as r:
                assert r.status == 404, name
        async with http.post(f"{service.url}/api/v1/recordings/{call_id}/links",
                             headers=AUTH) as r:
            link = (await r.json())["url"]
        async with http.get(link) as r:
            page = await r.text()
            assert r.status == 200 and "pat-1.webm" in page
        async with http.get(f"{link}/pat-1.webm", headers={"Range": "bytes=0-9"}) as r:
            assert r.status == 206 and await r.read() == data[:10]
        forged = link.rsplit("/", 1)[0] + "/" + "e30.e30.forged"
        async with http.get(f"{forged}/pat-1.webm") as r:
            assert r.status == 403
        # A join token of this very call grants no recording.
        join = service.token(call_id, "doc-1", role="doctor")
        async with http.get(f"{service.url}/recordings/{join}/pat-1.webm") as r:
            assert r.status == 403
        async with http.get(url, headers={"Authorization": f"Bearer {join}"}) as r:
            assert r.status == 401


async def test_a_lost_index_is_rebuilt_from_the_folders(
    recorded: Any, redis_client: Any
) -> None:
    """A lost recordings index in Redis is rebuilt from the folders' metadata, unchanged."""
    service, call_id = recorded
    before = await indexed(service, call_id)
    await redis_client.delete(f"telemed:recordings:{call_id}")
    await redis_client.zrem("telemed:recordings:index", call_id)
    store = service.app[STORE]
    assert await service.app[RECORDINGS].scan(store.get) == 0  # nothing to finalize again
    assert await indexed(service, call_id) == before


async def test_retention_dry_run_then_deletion_is_recorded(recorded: Any) -> None:
    """A retention dry run lists and keeps the files; the purge deletes them and records who did."""
    service, call_id = recorded
    files = sorted(service.settings.recordings_path.rglob("*.webm"))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{service.url}/api/v1/recordings/purge?dryRun=true",
                             headers=AUTH) as r:
            dry = await r.json()
        assert [c["call"] for c in dry["calls"]] == [call_id]
        assert all(f.exists() for f in files)
        async with http.post(f"{service.url}/api/v1/recordings/purge", headers=AUTH) as r:
            assert [c["call"] for c in (await r.json())["calls"]] == [call_id]
        async with http.get(f"{service.url}/api/v1/recordings/{call_id}", headers=AUTH) as r:
            meta = await r.json()
    assert not any(f.exists() for f in files)
    assert meta["state"] == "deleted" and meta["deleted"]["by"] == "api"
    assert sorted(meta["deleted"]["files"]) == sorted(f.name for f in files)


@contextlib.contextmanager
def small_volume(path: Path, size: int) -> Iterator[Path]:
    """A real tmpfs of `size` bytes: a volume that fills up for real. Mounting needs root
    (CI runs the suite as root); without it the test fails here, saying so."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"cannot mount a tmpfs (root needed): {done.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def test_a_nearly_full_volume_refuses_calls_until_retention_frees_it(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """A nearly full volume refuses new calls `recording.disk_full` until a purge frees space."""
    watermark = 4 * 2 ** 20
    body = {"kind": "consultation", "participants": [
        {"id": "p", "name": "P", "role": "patient"}]}
    with small_volume(tmp_path / "vol", 16 * 2 ** 20) as vol:
        env = {"TELEMED_RECORDINGS_DIR": str(vol),
               "TELEMED_RECORDINGS_MIN_FREE_BYTES": str(watermark),
               "TELEMED_RECORDINGS_RETENTION_DAYS": "1e-9"}
        async with run_mediaserver(recordings_root=vol) as (kms_url, _), run_service(
                tmp_path, redis_server.url, (kms_url,), env=env) as service, \
                aiohttp.ClientSession() as http:
            call_id = await recorded_call(service, seconds=1.0)
            recorded = sum(f.stat().st_size for f in vol.rglob("*.webm"))
            assert recorded > 16 * 1024, recorded
            # Fill the volume to just under the watermark: deleting the recording is enough
            # to get above it again.
            free = shutil.disk_usage(vol).free
            (vol / "ballast").write_bytes(b"\0" * (free - watermark + recorded // 2))
            calls_before = set(service.hub.calls)
            async with http.post(f"{service.url}/api/v1/calls", headers=AUTH, json=body) as r:
                refused = await r.json()
                assert (r.status, refused["code"]) == (507, "recording.disk_full")
            assert set(service.hub.calls) == calls_before
            async with http.post(f"{service.url}/api/v1/recordings/purge?dryRun=true",
                                 headers=AUTH) as r:
                assert [c["call"] for c in (await r.json())["calls"]] == [call_id]
            async with http.post(f"{service.url}/api/v1/calls", headers=AUTH, json=body) as r:
                assert r.status == 507  # a dry run frees nothing
            async with http.post(f"{service.url}/api/v1/recordings/purge",
                                 headers=AUTH) as r:
                assert [c["call"] for c in (await r.json())["calls"]] == [call_id]
            assert list(vol.rglob("*.webm")) == []
            async with http.post(f"{service.url}/api/v1/calls", headers=AUTH, json=body) as r:
                assert r.status == 201
            async with http.get(f"{service.url}/api/v1/recordings/{call_id}",
                                headers=AUTH) as r:
                meta = await r.json()
            async with http.get(f"{service.url}/api/v1/recordings/{call_id}/files/pat-1.webm",
                                headers=AUTH) as r:
                assert r.status == 404
        assert meta["state"] == "deleted" and meta["deleted"]["by"] == "api"
        on_disk = json.loads(next(vol.rglob("metadata.json")).read_text())
        assert on_disk["deleted"] == meta["deleted"]


async def test_a_watchdog_failure_still_leaves_finalized_metadata(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """A call failed by the watchdog leaves its empty recording flagged, and the MIS is told."""
    async with run_receiver(SECRET) as receiver, \
            run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,), watchdog_timeout=1.0,
            env=hooks(receiver.url)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        patient = CallClient(service, service.token(call.id, "pat-1"))
        patient.strip_remote_candidates = patient.mdns_candidates = True
        try:
            await patient.connect()
            await patient.join()
            await patient.publish()
            await patient.wait_event("callFailed")
        finally:
            await patient.close()
        await asyncio.wait_for(service.app[RECORDINGS].wait(call.id), 30)
        async with aiohttp.ClientSession() as http, http.get(
                f"{service.url}/api/v1/recordings/{call.id}", headers=AUTH) as r:
            meta = await r.json()
        reported = await receiver.wait_for("recording.failed", call.id)
        await receiver.wait_for("call.failed", call.id)
        # Deliveries keep their order: once a marker queued now arrives, so has everything
        # the worker sent before it.
        await service.app[OUTBOX].publish("call.created", {"call": {"id": "marker"}})
        await receiver.wait_for("call.created", "marker")
    # No media ever reached the recorder: the file is flagged, not dropped or hidden.
    assert meta["callState"] == "failed" and meta["failure"] == "no-media"
    assert [f["name"] for f in meta["files"]] == ["pat-1.webm"]
    assert meta["state"] == "flagged" and meta["problems"]
    assert reported["data"]["problem"].startswith("pat-1.webm: ")
    assert "recording.ready" not in receiver.events(call.id)  # nothing there to watch


async def test_recordings_of_a_sigkilled_service_are_finalized_at_restart(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Recordings of a SIGKILLed service are finalized and verified when the service restarts."""
    from telemed.embedded import hash_api_key

    api_key = uuid.uuid4().hex
    http_port = free_port()
    rec_dir = tmp_path / "rec"
    # A short session grace: the media server finalizes the dead service's recorders soon.
    async with run_mediaserver(recordings_root=rec_dir, gc_grace=0.5) as (kms_url, server):
        env = {**os.environ, "TELEMED_HTTP_PORT": str(http_port),
               "TELEMED_DATA_DIR": str(tmp_path / "d"), "TELEMED_REDIS_URL": redis_server.url,
               "TELEMED_MEDIA_KURENTO_URLS": kms_url, "TELEMED_TURN_PROVIDER": "none",
               "TELEMED_RECORDINGS_DIR": str(rec_dir), "TELEMED_RECORDINGS_COMPOSE": "false",
               "TELEMED_AUTH_API_KEY_HASHES": hash_api_key(api_key),
               "TELEMED_AUTH_JWT_SECRET": "k" * 32}
        base = f"http://127.0.0.1:{http_port}"
        auth = {"Authorization": f"Bearer {api_key}"}

        async def start() -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telemed.cli", "run", env=env)
            await poll_ready(f"{base}/readyz", 30)
            return proc

        proc = await start()
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    f"{base}/api/v1/calls", headers=auth, json={
                        "kind": "consultation", "participants": [
                            {"id": "pat-1", "name": "P", "role": "patient"},
                            {"id": "doc-1", "name": "D", "role": "doctor"}]}) as r:
                created = await r.json()
            tokens = {p["id"]: p["token"] for p in created["participants"]}
            fake = Service(base, None, None, None)  # type: ignore[arg-type]
            patient, doctor = CallClient(fake, tokens["pat-1"]), CallClient(fake, tokens["doc-1"])
            try:
                await asyncio.gather(patient.connect(), doctor.connect())
                await patient.join()
                await doctor.join()
                await asyncio.gather(patient.publish(), doctor.publish())
                await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
                await doctor.wait_event("callLive")
                await asyncio.sleep(1.0)  # media on disk before the crash
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            finally:
                await asyncio.gather(patient.close(), doctor.close())
            await asyncio.wait_for(server.wait_idle(), 10)
            proc = await start()
            async with aiohttp.ClientSession() as http:
                meta: dict[str, Any] = {}
                for _ in range(100):
                    async with http.get(f"{base}/api/v1/recordings/{created['id']}",
                                        headers=auth) as r:
                        if r.status == 200:
                            meta = await r.json()
                            if meta["state"] in ("verified", "flagged", "ready"):
                                break
                    await asyncio.sleep(0.1)  # another process's background work: polled
                async with http.get(f"{base}/api/v1/recordings?limit=200",
                                    headers=auth) as r:
                    listed = [m["call"] for m in (await r.json())["recordings"]]
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
    assert created["id"] in listed  # not lost from the index
    assert meta["recovered"] is True and meta["callState"] == "failed"
    assert [f["name"] for f in meta["files"]] == ["doc-1.webm", "pat-1.webm"]
    assert meta["state"] == "verified", meta["problems"]
    for f in meta["files"]:
        assert f["streams"] == ["audio", "video"] and f["duration"] > 0.5
        # No end in the history: the file's last write stands for it.
        assert f["startedAt"] < f["endedAt"] == (rec_dir / meta["folder"] / f["name"]
                                                 ).stat().st_mtime


async def indexed(service: Service, call_id: str) -> dict[str, Any]:
    """The call's recording as the MIS finds it: in the listing, then its metadata."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.url}/api/v1/recordings?limit=200", headers=AUTH) as r:
            listed = [m["call"] for m in (await r.json())["recordings"]]
        assert call_id in listed
        async with http.get(f"{service.url}/api/v1/recordings/{call_id}", headers=AUTH) as r:
            meta: dict[str, Any] = await r.json()
    return meta


async def test_a_participant_who_vanishes_leaves_finalized_recordings(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Someone who vanishes without `leave` leaves a verified recording that ends when they went."""
    async with run_receiver(SECRET) as receiver, \
            run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,), env={
                "TELEMED_CALLS_REJOIN_GRACE": "0.5", **hooks(receiver.url)}) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        try:
            await go_live(service, call, clients)
            await asyncio.sleep(1.0)  # media to record
            await clients["pat-1"].close()  # peer and socket gone, no `leave`
            await clients["doc-1"].wait_event("participantLeft", timeout=10)
            await clients["doc-1"].request("end")
        finally:
            await asyncio.gather(*(c.close() for c in clients.values()))
        await asyncio.wait_for(service.app[RECORDINGS].wait(call.id), 60)
        meta = await indexed(service, call.id)
        ready = await receiver.wait_for("recording.ready", call.id)
    assert meta["state"] == "verified", meta["problems"]
    assert [f["name"] for f in meta["files"]] == ["doc-1.webm", "pat-1.webm"]
    for f in meta["files"]:
        assert f["streams"] == ["audio", "video"] and f["duration"] > 0.5, f
    ends = {f["participant"]: f["endedAt"] for f in meta["files"]}
    assert ends["pat-1"] < ends["doc-1"]  # the patient's stream stopped when it vanished
    assert ready["data"]["problems"] == []


async def test_a_killed_media_server_leaves_recordings_finalized_or_flagged(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """A killed media server fails the call; each file is verified or flagged, and the MIS told."""
    port = free_port()
    env = {"TELEMED_MEDIA_HEALTH_INTERVAL": "0.2", "TELEMED_MEDIA_DOWN_AFTER": "0.5"}
    async with run_receiver(SECRET) as receiver, run_service(
            tmp_path, redis_server.url, (f"ws://127.0.0.1:{port}/kurento",),
            env={**env, **hooks(receiver.url)}) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        try:
            async with mediaserver_process(port, tmp_path) as proc:
                await service.hub.pool.check()
                await go_live(service, call, clients)
                await asyncio.sleep(1.0)  # media on disk before the crash
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                failed = await clients["pat-1"].wait_event("callFailed", timeout=10)
        finally:
            await asyncio.gather(*(c.close() for c in clients.values()))
        await asyncio.wait_for(service.app[RECORDINGS].wait(call.id), 60)
        meta = await indexed(service, call.id)
        told = [e["event"] for e in receiver.received
                if e["event"].startswith("recording.") and e["data"]["call"]["id"] == call.id]
    assert failed["reason"] == "media-server-lost"
    assert (meta["callState"], meta["failure"]) == ("failed", "media-server-lost")
    assert [f["name"] for f in meta["files"]] == ["doc-1.webm", "pat-1.webm"]
    # A recorder killed mid-write may leave a readable file or a broken one: each file is
    # either verified or carries its problem, and the MIS heard which.
    for f in meta["files"]:
        assert f["problem"] or (f["streams"] and f["duration"]), f
    assert meta["state"] == ("flagged" if any(f["problem"] for f in meta["files"])
                             else "verified")
    assert told, receiver.events()
    assert ("recording.failed" in told) == bool(meta["problems"])


async def test_downloads_keep_the_connection_for_the_next_request(
    recorded: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A ranged and a whole download leave the keep-alive connection usable by a POST."""
    service, call_id = recorded
    url = f"{service.url}/api/v1/recordings/{call_id}/files/pat-1.webm"
    opened: list[object] = []

    async def on_create(*_: object) -> None:
        opened.append(object())

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    # One connection, and a POST: aiohttp's client retries idempotent requests on a
    # dropped keep-alive connection, never a POST.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     trace_configs=[trace]) as http:
        async with http.get(url, headers={**AUTH, "Range": "bytes=0-99"}) as r:
            assert r.status == 206 and len(await r.read()) == 100
        async with http.get(url, headers=AUTH) as r:
            assert r.status == 200 and await r.read()
        async with http.post(f"{service.url}/api/v1/recordings/{call_id}/links",
                             headers=AUTH) as r:
            assert r.status == 200 and "url" in await r.json()
    assert len(opened) == 1
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_player_link_without_an_expiry_is_refused(recorded: Any) -> None:
    """A validly signed recordings token lacking `exp` (or with a bad one) opens nothing;
    the page a good one opens is neither cached nor named in a Referer."""
    service, call_id = recorded
    async with aiohttp.ClientSession() as http:
        for claims in ({}, {"exp": "never"}, {"exp": int(time.time()) - 60}):
            token = pyjwt.encode({"call": call_id, "aud": "telemed-recordings", **claims},
                                 JWT_SECRET, algorithm="HS256")
            for path in ("", "/pat-1.webm"):
                async with http.get(f"{service.url}/recordings/{token}{path}") as r:
                    assert r.status == 403, (claims, path)
        good = pyjwt.encode({"call": call_id, "aud": "telemed-recordings",
                             "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
        async with http.get(f"{service.url}/recordings/{good}/pat-1.webm") as r:
            assert r.status == 200  # the same signature with an expiry does open it
        async with http.get(f"{service.url}/recordings/{good}") as r:
            # The token in the URL must not reach a cache or another site's Referer.
            assert r.status == 200
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert "no-store" in r.headers["Cache-Control"]


def fill(volume: Path) -> Path:
    """Writes a ballast file until the volume is full for real (ENOSPC)."""
    ballast = volume / "ballast"
    with ballast.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return ballast


async def test_a_full_disk_delays_finalizing_and_the_recorders_error_is_kept(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """The volume fills mid-call: the recorder's NO_SPACE error lands in the metadata's
    problems, and finalizing (which cannot write metadata yet) waits and retries until
    space is freed, then lists and announces the call, with no restart."""
    with small_volume(tmp_path / "vol", 16 * 2 ** 20) as vol:
        env = {"TELEMED_RECORDINGS_DIR": str(vol), "TELEMED_RECORDINGS_MIN_FREE_BYTES": "0"}
        async with run_receiver(SECRET) as receiver, \
                run_mediaserver(recordings_root=vol) as (kms_url, _), run_service(
                tmp_path, redis_server.url, (kms_url,),
                env={**env, **hooks(receiver.url)}) as service:
            worker = service.app[RECORDINGS]
            worker.retry_base, worker.retry_cap = 0.05, 0.2
            call = service.hub.create_call(CallKind.CONSULTATION, [
                ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
            clients = clients_for(service, call)
            try:
                await go_live(service, call, clients)
                ballast = await asyncio.to_thread(fill, vol)
                failed = await clients["pat-1"].wait_event("callFailed", timeout=30)
            finally:
                await asyncio.gather(*(c.close() for c in clients.values()))
            # Metadata cannot be written: the job is retried, not dropped.
            await wait_until(lambda: call.id in worker._retries, timeout=30)
            assert not worker.done[call.id].is_set()
            await asyncio.to_thread(ballast.unlink)
            await asyncio.wait_for(worker.wait(call.id), 60)
            meta = await indexed(service, call.id)
            await receiver.wait_for("recording.failed", call.id)
            told = [e["data"]["problem"] for e in receiver.received
                    if e["event"] == "recording.failed" and e["data"]["call"]["id"] == call.id]
    assert failed["reason"] == "recording-failed"
    assert meta["state"] == "flagged"
    assert any("NO_SPACE" in p for p in meta["problems"]), meta["problems"]
    assert any("NO_SPACE" in p for p in told), told
