"""The orphan sweep as the running service does it (issue #18, "Done when"): a signalling
process is SIGKILLed mid-call, the embedded media server (its own process) runs the call's
pipeline on, recording; nothing adopts the call; another node sharing Redis, the media
server and the recordings volume releases the pipeline once Redis says the call is
finished, within `media.sweep_interval`, and the recorders' files are then whole.

Everything is real: redis-server, `python -m mediaserver`, the service in a child process
with aiortc participants, the second node in-process, ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import ObjectNotFound
from kurento_ctl.objects import MediaObject
from mis.history import CallStore
from recordings.catalog import Catalog
from signaling.call import CallKind
from telemed.app import POOL, RECORDINGS, SWEEPER
from telemed.orphans import live_calls, sweep_turn
from telemed.recovery import BOOKED
from tests.call_fakes import make_hub
from tests.helpers import scaled, wait_until, within
from tests.hub_fixtures import Service, run_service
from tests.media_fixtures import mediaserver_process
from tests.services import free_port, run_redis

ROOT = Path(__file__).resolve().parents[1]

#: The dying node: the real service with two aiortc participants in one process. It
#: prints the call and its pipeline once both recorders have written a moment of media.
DYING_NODE = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from signaling.call import CallKind
    from tests.hub_fixtures import CallClient, run_service

    async def main(redis_url, kms_url, data, recordings):
        env = {"TELEMED_RECORDINGS_DIR": recordings, "TELEMED_NODE_ID": "dying-node"}
        async with run_service(Path(data), redis_url, (kms_url,), env=env) as service:
            call = service.hub.create_call(CallKind.CONSULTATION, [
                ("pat-1", "P", "patient"), ("doc-1", "D", "doctor")])
            await service.app_sink_settled()  # in Redis, unfinished, before any pipeline
            patient = CallClient(service, service.token(call.id, "pat-1"))
            doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor"))
            await asyncio.gather(patient.connect(), doctor.connect())
            await patient.join()
            await doctor.join()
            await asyncio.gather(patient.publish(), doctor.publish())
            await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
            await doctor.wait_event("callLive")
            await service.app_sink_settled()
            await asyncio.sleep(1.5)  # some recorded media: what the files are checked for
            pipeline = service.hub.sessions[call.id].media.pipeline
            print(json.dumps({"call": call.id, "pipeline": pipeline.id}), flush=True)
            await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
""")

#: s; the surviving node's sweep period and grace (settings media.sweep_interval/_grace)
INTERVAL = 1.0
GRACE = 1.0


async def probe_duration(path: Path) -> float | None:
    """The file's duration as ffprobe reads it; None while the muxer has not written it
    (a WebM gets its duration when the recorder closes it) or the file does not parse."""
    binary = shutil.which("ffprobe")
    assert binary, "ffprobe is not installed; ./dev test installs it"
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    info: dict[str, Any] = json.loads(out)
    duration = info.get("format", {}).get("duration")
    return float(duration) if duration not in (None, "N/A") else None


@contextlib.asynccontextmanager
async def dying_node(redis_url: str, kms_url: str, data: Path, recordings: Path
                     ) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DYING_NODE, redis_url, kms_url, str(data), str(recordings),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = await within(proc.stdout.readline(), 60, "the dying node's live call")
        assert line, "the dying node exited before its call was live"
        yield proc, json.loads(line)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def sweeps(service: Service, count: int) -> None:
    """Waits for `count` more runs of the node's periodic sweep."""
    sweeper = service.app[SWEEPER]
    target = sweeper.runs + count
    while sweeper.runs < target:
        await sweeper.ran.wait()


async def gone(kms_url: str, object_id: str) -> bool:
    """Whether the media server has released the object (asked once it should be gone:
    asking about a live object would make this session co-own it)."""
    async with KurentoClient(kms_url) as client:
        try:
            await MediaObject(client, object_id).invoke("getName")
        except ObjectNotFound:
            return True
    return False


async def test_a_call_is_live_while_unfinished_in_redis_or_held_by_this_node(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """The sweep's question, answered by real Redis: unfinished anywhere (booked, live, a
    dead node's) is live; finished or unknown is not, unless this node holds the call;
    a Redis that does not answer raises (the sweep then releases nothing)."""
    store = CallStore(redis_client)
    for call_id, state in (("booked", "created"), ("dead-nodes", "live"),
                           ("over", "ended"), ("failed", "failed")):
        await store.save({"id": call_id, "createdAt": time.time(), "state": state})
    hub, _ = make_hub(tmp_path)  # a real Hub; its media layer is never used here
    held = hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                   ("d", "D", "doctor")])
    live = live_calls(store, hub)
    asked = {"booked", "dead-nodes", "over", "failed", "unknown", held.id}
    assert await live(asked) == {"booked", "dead-nodes", held.id}
    await hub.end(held.id)
    assert await live(asked) == {"booked", "dead-nodes"}
    away = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                   socket_connect_timeout=1)
    with pytest.raises((aioredis.ConnectionError, OSError)):
        await live_calls(CallStore(away), hub)({"booked"})
    await away.aclose()


@pytest.mark.timeout(scaled(180))  # two service nodes, a media server, aiortc peers
async def test_a_sigkilled_nodes_pipeline_is_released_by_another_nodes_sweep_once_finished(
    tmp_path: Path,
) -> None:
    """While Redis says the dead node's call is unfinished, the sweep keeps its pipeline
    (a takeover may come); once finished, it is released within media.sweep_interval, the
    recorders' files become whole and the recordings are catalogued."""
    recordings = tmp_path / "recordings"
    with run_redis(tmp_path / "redis") as redis_server:
        redis = aioredis.Redis.from_url(redis_server.url)
        port = free_port()
        kms_url = f"ws://127.0.0.1:{port}/kurento"
        async with mediaserver_process(port, tmp_path), \
                run_service(tmp_path / "survivor", redis_server.url, (kms_url,), env={
                    "TELEMED_RECORDINGS_DIR": str(recordings),
                    "TELEMED_MEDIA_SWEEP_INTERVAL": str(scaled(INTERVAL)),
                    "TELEMED_MEDIA_SWEEP_GRACE": str(GRACE)}) as survivor:
            async with dying_node(redis_server.url, kms_url, tmp_path / "dying",
                                  recordings) as (proc, found):
                call_id, pipeline_id = found["call"], found["pipeline"]
                await within(sweeps(survivor, 2), INTERVAL * 2 + 10, "two sweeps")
                tagged = {p: t for r in survivor.app[SWEEPER].reports
                          for p, t in r.tagged.items()}
                # Seen, and left alone because live (not merely young). Tagged with the
                # dying node's node.id.
                assert tagged.get(pipeline_id) == (call_id, "dying-node")
                assert pipeline_id not in survivor.app[SWEEPER].reports[-1].kept_young
                proc.send_signal(signal.SIGKILL)
                await within(proc.wait(), 10, "the SIGKILLed node to exit")

            # Unfinished in Redis, owned by nobody: kept, as a node taking it over needs.
            await within(sweeps(survivor, 2), INTERVAL * 2 + 10, "two sweeps")
            last = survivor.app[SWEEPER].reports[-1]
            assert pipeline_id in last.tagged and pipeline_id not in last.kept_young
            assert all(pipeline_id not in r.released for r in survivor.app[SWEEPER].reports)
            files = sorted(recordings.rglob("*.webm"))
            assert [f.name for f in files] == ["doc-1.webm", "pat-1.webm"]
            # The media server runs the dead node's call on: its files are still open.
            assert [await probe_duration(f) for f in files] == [None, None]

            # Nothing adopts the call: marked finished, as a restart without takeover does.
            store = CallStore(redis)
            closed = await store.close_unfinished("its node died", keep=BOOKED)
            assert [s["id"] for s in closed] == [call_id]
            finished_at = time.monotonic()

            async def released() -> None:
                while not any(pipeline_id in r.released
                              for r in survivor.app[SWEEPER].reports):
                    await survivor.app[SWEEPER].ran.wait()

            # The documented bound: one sweep interval (the pipeline is older than the
            # grace), plus the sweep's own work on a loaded machine.
            await within(released(), INTERVAL + 10, "the orphan's release")
            took = time.monotonic() - finished_at
            assert await gone(kms_url, pipeline_id)
            durations = [await probe_duration(f) for f in files]
            assert all(d is not None and d > 1.0 for d in durations), (durations, took)

            # The released call's recordings went to the surviving node's worker.
            worker = survivor.app[RECORDINGS]
            await within(worker.wait(call_id), 30, "the recordings' finalization")
            meta = Catalog.read(files[0].parent)
            assert meta is not None and meta["call"] == call_id and meta["recovered"]
            assert sorted(f["name"] for f in meta["files"]) == ["doc-1.webm", "pat-1.webm"]
            assert all(f["duration"] for f in meta["files"]), meta["files"]
        await redis.aclose()


@pytest.mark.timeout(scaled(180))  # two service nodes, a media server, aiortc peers
async def test_a_restarted_node_releases_its_dead_predecessors_pipeline_at_start_up(
    tmp_path: Path,
) -> None:
    """The node that comes back after a SIGKILL releases the orphan in its start-up sweep,
    before it serves, and its recordings scan catalogues whole files. (The app runs that
    sweep before the scan; the worker's probes come late enough that this test passes
    with the opposite order too, so it does not pin the order.)"""
    recordings = tmp_path / "recordings"
    with run_redis(tmp_path / "redis") as redis_server:
        redis = aioredis.Redis.from_url(redis_server.url)
        port = free_port()
        kms_url = f"ws://127.0.0.1:{port}/kurento"
        async with mediaserver_process(port, tmp_path):
            async with dying_node(redis_server.url, kms_url, tmp_path / "node",
                                  recordings) as (proc, found):
                call_id, pipeline_id = found["call"], found["pipeline"]
                proc.send_signal(signal.SIGKILL)
                await within(proc.wait(), 10, "the SIGKILLed node to exit")
            files = sorted(recordings.rglob("*.webm"))
            assert [await probe_duration(f) for f in files] == [None, None]
            # Finished as a restart without takeover leaves it (done here, so that the
            # test does not depend on what recovery decides at start).
            await CallStore(redis).close_unfinished("its node died", keep=BOOKED)
            async with run_service(tmp_path / "node", redis_server.url, (kms_url,), env={
                    "TELEMED_RECORDINGS_DIR": str(recordings),
                    "TELEMED_MEDIA_SWEEP_INTERVAL": "3600",
                    "TELEMED_MEDIA_SWEEP_GRACE": "0"}) as restarted:
                sweeper = restarted.app[SWEEPER]
                assert sweeper.runs == 1  # the start-up sweep, done before serving
                assert [r.released for r in sweeper.reports] == [[pipeline_id]]
                assert await gone(kms_url, pipeline_id)
                await within(restarted.app[RECORDINGS].wait(call_id), 30,
                             "the scan's finalization")
                meta = Catalog.read(files[0].parent)
                assert meta is not None and meta["recovered"]
                assert [(f["name"], bool(f["duration"])) for f in meta["files"]] == [
                    ("doc-1.webm", True), ("pat-1.webm", True)], meta["problems"]
                assert not any("no duration" in p for p in meta["problems"]), meta["problems"]
        await redis.aclose()


#: Another application's process on the same media server: one untagged pipeline, which no
#: sweep of ours ever touches. Prints its id, then waits to be killed.
FOREIGN = textwrap.dedent("""
    import asyncio, sys
    from kurento_ctl.client import KurentoClient
    from kurento_ctl.transaction import Transaction

    async def main(url):
        client = KurentoClient(url)
        await client.connect()
        tx = Transaction(client)
        pipeline = tx.create_pipeline()
        await tx.commit()
        print(pipeline.id, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1]))
""")
#: s; the media server's garbage-collector period (KMS: 240)
PERIOD = 1.0


async def test_the_media_server_collects_a_dead_processs_objects_while_the_service_probes_it(
    tmp_path: Path,
) -> None:
    """The service's health probe (every 0.1 s) does not co-own the media server's
    objects: a SIGKILLed client's pipeline is collected by the server itself within two
    collector periods, as on KMS, with no sweep involved."""
    port = free_port()
    kms_url = f"ws://127.0.0.1:{port}/kurento"
    with run_redis(tmp_path / "redis") as redis_server:
        async with mediaserver_process(port, tmp_path, gc_grace=scaled(PERIOD)), \
                run_service(tmp_path / "svc", redis_server.url, (kms_url,), env={
                    "TELEMED_MEDIA_HEALTH_INTERVAL": "0.1",
                    "TELEMED_MEDIA_SWEEP_INTERVAL": "3600"}) as service:
            server = service.app[POOL].servers[0]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FOREIGN, kms_url, stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                assert proc.stdout is not None
                line = await within(proc.stdout.readline(), 20, "the foreign pipeline")
                pipeline_id = line.decode().strip()
                # The probe socket hears of it (ObjectCreated), as of every creation.
                await wait_until(lambda: pipeline_id in server.seen_pipelines)
                proc.send_signal(signal.SIGKILL)
                await within(proc.wait(), 10, "the SIGKILLed client to exit")
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            # ObjectDestroyed reaches the probe socket when the collector frees it: 0.75
            # to 2 periods after the socket closed, plus a period of slack.
            await wait_until(lambda: pipeline_id not in server.seen_pipelines,
                             timeout=3 * PERIOD + 5,
                             describe=lambda: sorted(server.seen_pipelines))
            assert server.up and service.app[SWEEPER].runs == 1  # the start-up one only


async def test_one_node_per_interval_runs_the_periodic_sweep(redis_client: Any) -> None:
    """Two nodes' gates on one Redis: the first to ask sweeps this round, the other and a
    second ask of the first do not; once the round's lock is gone, the next asker sweeps."""
    node_a, node_b = sweep_turn(redis_client, 600.0), sweep_turn(redis_client, 600.0)
    assert await node_a() is True
    assert await node_b() is False
    assert await node_a() is False
    assert 0 < await redis_client.pttl("telemed:lock:orphan-sweep") <= 540_000
    await redis_client.delete("telemed:lock:orphan-sweep")  # as the round's TTL would
    assert await node_b() is True
