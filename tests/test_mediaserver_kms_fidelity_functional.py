"""The embedded media server behaves like KMS 7.3 where our product can see it
(KMS-SOURCE-NOTES.md): ownership and garbage collection, the `getPipelines` side effect,
one request at a time per socket, 40007 for a session that never touched an object, and
the generic MediaObject/MediaElement surface of every kmd.json method."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from kurento_ctl.client import KurentoClient, SessionLoss
from kurento_ctl.errors import RpcError
from kurento_ctl.objects import MediaObject, MediaPipeline, ServerManager
from kurento_ctl.pool import KurentoPool
from kurento_ctl.transaction import Transaction
from mediaserver.core import MediaServer
from tests.helpers import scaled, wait_until, within
from tests.kmd import kmd
from tests.kurento_fixtures import run_kms_like, run_kurento_proxy
from tests.services import free_port

#: KMS's garbage-collector period in these tests (s); KMS's default is 240.
PERIOD = 0.4


async def gc_runs(server: MediaServer, runs: int) -> None:
    """Waits until the collector has run `runs` more times."""
    target = server.ownership.runs + runs
    while server.ownership.runs < target:
        await within(server.ownership.ran.wait(), 10 * PERIOD, "a collector run")


async def test_an_orphan_is_collected_while_a_pool_probes_the_server(tmp_path: Path) -> None:
    """Our health probe no longer owns every object: KMS's GC still frees orphans."""
    async with run_kms_like(tmp_path, gc_grace=scaled(PERIOD)) as (url, server):
        pool = KurentoPool([url], health_interval=scaled(PERIOD / 8))
        await pool.start()
        try:
            async with KurentoClient(url) as dead:
                orphan = await MediaPipeline.create(dead)
            # The creating socket is gone; three collector runs cover the 2-period window.
            await gc_runs(server, 3)
            assert orphan.id not in server.objects
            assert pool.status()[url]["up"]
        finally:
            await pool.close()


async def test_polling_get_pipelines_keeps_every_orphan_alive_as_on_kms(tmp_path: Path) -> None:
    """The side effect that made us drop getPipelines from the probe, reproduced."""
    async with run_kms_like(tmp_path, gc_grace=scaled(PERIOD)) as (url, server):
        async with KurentoClient(url) as dead:
            orphan = await MediaPipeline.create(dead)
        async with KurentoClient(url) as poller:
            stop = asyncio.Event()

            async def poll() -> None:
                while not stop.is_set():
                    await ServerManager(poller).get_pipelines()
                    await asyncio.sleep(PERIOD / 8)  # a poll interval, as the old probe had

            task = asyncio.create_task(poll())
            await gc_runs(server, 4)
            assert orphan.id in server.objects, "collected although getPipelines owns it"
            stop.set()
            await task
        await gc_runs(server, 4)
        assert orphan.id not in server.objects, "the internal session never let go"


async def test_a_session_that_touches_an_object_co_owns_it(tmp_path: Path) -> None:
    """KMS: any invoke makes the caller a co-owner; the creator's death does not free it."""
    async with run_kms_like(tmp_path, gc_grace=scaled(PERIOD)) as (url, server), \
            KurentoClient(url) as taker:
        async with KurentoClient(url) as creator:
            pipeline = await MediaPipeline.create(creator)
            endpoint = await pipeline.create_webrtc_endpoint()
        await MediaObject(taker, pipeline.id).invoke("getName")
        await gc_runs(server, 3)
        # The pipeline survives through the taker; the endpoint it never touched does not.
        assert pipeline.id in server.objects and endpoint.id not in server.objects


async def test_a_session_that_never_touched_an_object_is_unknown_on_reconnect(
    tmp_path: Path,
) -> None:
    """KMS: 40007 for a handed-out session id MediaSet never saw; not a restart."""
    async with run_kms_like(tmp_path) as (url, _), \
            KurentoClient(url, reconnect_delays=(0.01,)) as client, \
            aiohttp.ClientSession():
        lost: list[SessionLoss] = []
        client.on_session_lost(lost.append)
        assert client._ws is not None
        await client._ws.close()
        await wait_until(lambda: lost and client.connected, describe=lambda: lost)
        assert [x.restarted for x in lost] == [False]


async def test_one_socket_is_served_one_request_at_a_time_and_a_ping_waits_harmlessly(
    tmp_path: Path,
) -> None:
    """Strict serving: answers come in request order, and pings behind them drop nothing."""
    async with run_kms_like(tmp_path) as (url, _), \
            KurentoClient(url, ping_interval=0.1, ping_timeout=scaled(1.0)) as client:
        manager = ServerManager(client)
        done: list[str] = []

        async def slow(n: int) -> None:
            await manager.get_used_cpu(int(scaled(400)))
            done.append(f"cpu{n}")

        async def fast() -> None:
            await manager.get_used_memory()
            done.append("memory")

        await within(asyncio.gather(*(slow(n) for n in range(5)), fast()), 20, "requests")
        assert done == ["cpu0", "cpu1", "cpu2", "cpu3", "cpu4", "memory"]
        assert client.connected and client.task_count <= 3


async def test_tags_are_written_inside_the_creating_transaction(tmp_path: Path) -> None:
    """addTag works on newref ids; getTags, getTag and the tag-less 40110 answer as KMS."""
    async with run_kms_like(tmp_path) as (url, _), KurentoClient(url) as client:
        tx = Transaction(client)
        pipeline = tx.create_pipeline()
        endpoint = tx.create_webrtc_endpoint(pipeline)
        tx.add_tag(pipeline, "telemed.call", "c1")
        tx.add_tag(endpoint, "telemed.endpoint", "alice/publish")
        await tx.commit()
        tags = await MediaObject(client, pipeline.id).invoke("getTags")
        assert tags == [{"__module__": "kurento", "__type__": "Tag", "key": "telemed.call",
                         "value": "c1"}]
        assert await MediaObject(client, endpoint.id).invoke(
            "getTag", key="telemed.endpoint") == "alice/publish"
        try:
            await MediaObject(client, endpoint.id).invoke("getTag", key="nope")
            raise AssertionError("a missing tag key was answered")
        except RpcError as exc:
            assert (exc.code, exc.data_type) == (40110, "MEDIA_OBJECT_TAG_KEY_NOT_FOUND")
        children = await MediaObject(client, pipeline.id).invoke("getChildren")
        assert children == [endpoint.id]


# ---------------------------------------------------------------- the kmd.json surface

SERVED_CLASSES = ("MediaPipeline", "WebRtcEndpoint", "RecorderEndpoint", "PlayerEndpoint",
                  "ServerManager")


def kmd_operations(class_name: str) -> dict[str, list[dict[str, Any]]]:
    """Every invokable operation of a class by kmd.json: methods, getters, setters."""
    ops: dict[str, list[dict[str, Any]]] = {}
    for cls in kmd().lineage(class_name):
        for name, params in cls.methods.items():
            ops.setdefault(name, params)
        for prop in cls.properties:
            cap = prop["name"][0].upper() + prop["name"][1:]
            ops.setdefault("get" + cap, [])
            if not prop.get("readOnly") and not prop.get("final"):
                ops.setdefault("set" + cap, [{"name": prop["name"], "type": prop["type"]}])
    return ops


def sample(param: dict[str, Any], sink: str) -> Any:
    kind = param["type"]
    if kind.endswith("[]"):
        return []
    return {"String": "x", "int": 1, "int64": 1, "float": 1.0, "double": 1.0,
            "boolean": True, "MediaType": "AUDIO", "GstreamerDotDetails": "SHOW_ALL",
            "IceCandidate": {"__module__": "kurento", "__type__": "IceCandidate",
                             "candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host",
                             "sdpMid": "0", "sdpMLineIndex": 0},
            }.get(kind, sink if kind in kmd().classes else {})


async def test_every_kmd_method_is_served_or_refused_as_not_implemented(
    tmp_path: Path,
) -> None:
    """Derived from the kmd.json files: no method of a served class crashes or is unknown."""
    async with run_kms_like(tmp_path, serial=False) as (url, _), \
            KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        objects = {
            "MediaPipeline": pipeline.id,
            "WebRtcEndpoint": (await pipeline.create_webrtc_endpoint()).id,
            "RecorderEndpoint": (await pipeline.create_recorder_endpoint(
                (tmp_path / "r.webm").as_uri())).id,
            "PlayerEndpoint": (await pipeline.create_player_endpoint(
                (tmp_path / "missing.webm").as_uri())).id,
            "ServerManager": "manager_ServerManager",
        }
        sink = (await pipeline.create_webrtc_endpoint()).id
        outcomes: dict[str, list[str]] = {"served": [], "not implemented": [], "bad": []}
        for class_name in SERVED_CLASSES:
            for op, params in sorted(kmd_operations(class_name).items()):
                args = {p["name"]: sample(p, sink) for p in params if not p.get("optional")}
                what = f"{class_name}.{op}"
                try:
                    await MediaObject(client, objects[class_name]).invoke(op, **args)
                    outcomes["served"].append(what)
                except RpcError as exc:
                    if exc.code == 40006 and exc.data_type == "NOT_IMPLEMENTED":
                        outcomes["not implemented"].append(what)
                    elif exc.code in (-32603, 40008, -32601):
                        outcomes["bad"].append(f"{what}: {exc}")
                    else:
                        outcomes["served"].append(what)  # a KMS error for our sample args
        assert outcomes["bad"] == []
        assert len(outcomes["served"]) > 3 * len(outcomes["not implemented"]), outcomes
        # The generic surface any application uses is served, not refused.
        for op in ("MediaPipeline.getChildren", "WebRtcEndpoint.getSourceConnections",
                   "WebRtcEndpoint.setMaxVideoSendBandwidth", "RecorderEndpoint.getTags",
                   "WebRtcEndpoint.getStats", "PlayerEndpoint.setName"):
            assert op in outcomes["served"], op
        await pipeline.release()


async def test_bandwidth_properties_and_connections_answer_as_kms(tmp_path: Path) -> None:
    """Setters keep what is set; defaults are KMS's; connections list both ends."""
    async with run_kms_like(tmp_path) as (url, _), KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        source = await pipeline.create_webrtc_endpoint()
        sink = await pipeline.create_webrtc_endpoint()
        assert await source.invoke("getMaxVideoSendBandwidth") == 500
        assert await source.invoke("getMinVideoSendBandwidth") == 100
        await source.invoke("setMaxVideoSendBandwidth", maxVideoSendBandwidth=2000)
        assert await source.invoke("getMaxVideoSendBandwidth") == 2000
        await source.connect(sink, "VIDEO")
        [link] = await sink.invoke("getSourceConnections")
        assert (link["source"], link["sink"], link["type"]) == (source.id, sink.id, "VIDEO")
        assert await source.invoke("getSinkConnections", mediaType="AUDIO") == []
        stats = await sink.invoke("getStats")
        assert isinstance(stats, dict) and stats
        await pipeline.release()


async def test_an_orphan_goes_between_three_quarters_of_a_period_and_two_runs_later(
    tmp_path: Path,
) -> None:
    """KMS's window after the socket closes: 0.75 to 2 periods (180-480 s at 240 s)."""
    period = scaled(PERIOD)
    async with run_kms_like(tmp_path, gc_grace=period) as (url, server):
        async with KurentoClient(url) as dead:
            orphan = await MediaPipeline.create(dead)
        closed, runs = time.monotonic(), server.ownership.runs
        await wait_until(lambda: orphan.id not in server.objects, timeout=20 * period)
        assert time.monotonic() - closed >= 0.75 * period * 0.99
        assert server.ownership.runs - runs <= 2


async def test_pipelines_lost_in_an_outage_are_released_when_the_same_server_is_back(
    tmp_path: Path,
) -> None:
    """Down is our verdict: the same KMS process kept them running, so the pool releases
    them once it answers again."""
    async with run_kms_like(tmp_path, serial=False) as (upstream, server), \
            run_kurento_proxy(upstream) as (url, proxy):
        pool = KurentoPool([url], health_interval=scaled(60), down_after=0.0,
                           client_factory=lambda u: KurentoClient(u, reconnect_delays=(0.05,)))
        lost: list[set[str]] = []
        pool.on_pipelines_lost(lambda _url, ids: lost.append(ids))
        await pool.start()
        try:
            _, pipeline = await pool.create_pipeline()
            proxy.upstream = f"ws://127.0.0.1:{free_port()}/kurento"  # the network is down
            await proxy.drop_connections()
            await wait_until(lambda: not pool.servers[0].client.connected)
            await pool.check()
            assert lost == [{pipeline.id}] and pipeline.id in server.objects
            proxy.upstream = upstream
            await wait_until(lambda: all(c.connected for c in pool.servers[0].all_clients),
                             timeout=10, describe=lambda: pool.status())
            await pool.check()
            await wait_until(lambda: pipeline.id not in server.objects,
                             describe=lambda: pool.servers[0].orphans)
        finally:
            await pool.close()
