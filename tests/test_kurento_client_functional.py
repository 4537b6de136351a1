"""kurento_ctl against a scripted KMS (checked against kmd.json) and the embedded server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kurento_ctl.client import KurentoClient, SessionLoss
from kurento_ctl.errors import (
    ObjectNotFound,
    OperationNotRun,
    RequestTimeout,
    RpcError,
    SdpError,
)
from kurento_ctl.events import (
    IceCandidateFound,
    IceGatheringDone,
    KurentoEvent,
    MediaFlowInStateChanged,
    ObjectCreated,
    Recording,
)
from kurento_ctl.objects import MediaObject, MediaPipeline, ServerManager, pipeline_scope
from kurento_ctl.transaction import Transaction
from tests.helpers import scaled, wait_until, within
from tests.kurento_fixtures import ScriptedKms, run_kurento_proxy, run_scripted_kms
from tests.media_fixtures import Peer, run_mediaserver
from tests.services import free_port


@pytest.fixture(params=["scripted", "embedded"])
async def kms(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """The same client tests run against both servers."""
    if request.param == "scripted":
        async with run_scripted_kms() as (url, scripted):
            yield url, scripted
            assert scripted.violations == [], "requests that do not fit kmd.json"
    else:
        async with run_mediaserver(recordings_root=tmp_path) as (url, server):
            yield url, server


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[str, ScriptedKms]]:
    async with run_scripted_kms() as (url, kms):
        yield url, kms
        assert kms.violations == [], "requests that do not fit kmd.json"


async def test_objects_are_created_invoked_and_released(kms: tuple[str, Any],
                                                        tmp_path: Path) -> None:
    """Objects are created, connected and released; a released one is MEDIA_OBJECT_NOT_FOUND."""
    url, _ = kms
    async with KurentoClient(url) as client:
        manager = ServerManager(client)
        pipeline = await MediaPipeline.create(client)
        assert pipeline.id.endswith("_kurento.MediaPipeline")
        endpoint = await pipeline.create_webrtc_endpoint()
        recorder = await pipeline.create_recorder_endpoint(f"file://{tmp_path}/x.webm",
                                                           media_profile="WEBM_AUDIO_ONLY")
        assert endpoint.id.startswith(pipeline.id + "/")
        await endpoint.connect(recorder, "AUDIO")
        await endpoint.set_turn_url("user:pass@127.0.0.1:3478")
        assert pipeline.id in await manager.get_pipelines()
        await pipeline.release()
        assert pipeline.id not in await manager.get_pipelines()
        with pytest.raises(ObjectNotFound) as info:
            await endpoint.gather_candidates()
        assert info.value.code == 40101 and info.value.data_type == "MEDIA_OBJECT_NOT_FOUND"


async def test_a_hundred_requests_in_flight_all_complete(kms: tuple[str, Any]) -> None:
    """A hundred requests in flight on one connection all get their own replies."""
    url, _ = kms
    async with KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        results = await asyncio.gather(*(ServerManager(client).get_pipelines()
                                         for _ in range(100)))
        assert all(pipeline.id in r for r in results)
        await pipeline.release()


async def test_unknown_factory_is_a_typed_error_keeping_kurentos_code(kms: tuple[str, Any]) -> None:
    """Creating an unknown type raises RpcError with Kurento's code 40108 and message."""
    url, backend = kms
    async with KurentoClient(url) as client:
        with pytest.raises(RpcError) as info:
            await client.request("create", {"type": "NoSuchThing", "constructorParams": {}})
        assert info.value.code == 40108
        assert "Factory 'NoSuchThing' not found" in info.value.message
        if isinstance(backend, ScriptedKms):
            backend.violations.clear()  # the bad request was the point of this test


async def test_pipeline_scope_releases_on_every_exit_path(kms: tuple[str, Any]) -> None:
    """`pipeline_scope` releases its pipeline when its body raises."""
    url, _ = kms
    async with KurentoClient(url) as client:
        with pytest.raises(ZeroDivisionError):
            async with pipeline_scope(client) as pipeline:
                await pipeline.create_webrtc_endpoint()
                raise ZeroDivisionError
        assert await ServerManager(client).get_pipelines() == []


async def test_releasing_a_pipeline_drops_its_handlers_and_only_its(
    kms: tuple[str, Any]
) -> None:
    """A released pipeline's handlers (its own and its elements') go; another's stay."""
    url, _ = kms
    async with KurentoClient(url) as client:
        gone, kept = await MediaPipeline.create(client), await MediaPipeline.create(client)
        for pipeline in (gone, kept):
            endpoint = await pipeline.create_webrtc_endpoint()
            await endpoint.subscribe(MediaFlowInStateChanged, lambda e: None)
            await endpoint.subscribe(IceGatheringDone, lambda e: None)
        assert client.handler_count == 4
        await gone.release()
        assert client.handler_count == 2
        await kept.release()
        assert client.handler_count == 0


async def test_requests_made_in_one_loop_turn_leave_in_one_write(
    kms: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty requests made together reach the socket's transport as one write (a spy
    counts the real transport's writes) and are each answered."""
    url, _ = kms
    async with KurentoClient(url) as client:
        buffer = client._ws._writer.transport  # type: ignore[union-attr]
        assert type(buffer).__name__ == "_TurnBuffer"
        writes: list[int] = []
        real = buffer._transport.write

        def counted(data: bytes) -> None:
            writes.append(len(data))
            real(data)

        monkeypatch.setattr(buffer._transport, "write", counted)
        manager = ServerManager(client)
        answers = await asyncio.gather(*(manager.get_pipelines() for _ in range(20)))
        assert answers == [[]] * 20
        assert len(writes) == 1


async def test_close_leaves_no_task_or_handler_behind(kms: tuple[str, Any]) -> None:
    """Releasing drops the event handlers and closing ends every task the client started."""
    url, _ = kms
    before = {t for t in asyncio.all_tasks() if not t.done()}
    client = KurentoClient(url)
    await client.connect()
    pipeline = await MediaPipeline.create(client)
    endpoint = await pipeline.create_webrtc_endpoint()
    await endpoint.subscribe(MediaFlowInStateChanged, lambda e: None)
    await pipeline.release()
    assert client.handler_count == 0
    await client.close()
    assert client.task_count == 0
    after = {t for t in asyncio.all_tasks() if not t.done()}
    assert {t.get_name() for t in after - before if t.get_name().startswith("kurento:")} == set()


async def test_server_manager_events_reach_a_subscriber(kms: tuple[str, Any]) -> None:
    """A ServerManager event reaches its subscriber as a typed ObjectCreated."""
    url, backend = kms
    async with KurentoClient(url) as client:
        created: asyncio.Queue[KurentoEvent] = asyncio.Queue()
        await ServerManager(client).subscribe(ObjectCreated, created.put_nowait)
        pipeline = await MediaPipeline.create(client)
        if isinstance(backend, ScriptedKms):
            await backend.emit("manager_ServerManager", "ObjectCreated", {"object": pipeline.id})
        event = await within(created.get(), 5, "ObjectCreated")
        assert isinstance(event, ObjectCreated)
        assert event.raw["object"] == pipeline.id


async def test_a_transaction_creates_objects_and_uses_them_by_newref(kms: tuple[str, Any],
                                                                  tmp_path: Path) -> None:
    """A transaction creates objects, refers to them by newref, and resolves them to real ids."""
    url, backend = kms
    async with KurentoClient(url) as client:
        tx = Transaction(client)
        pipeline = tx.create_pipeline()
        endpoint = tx.create_webrtc_endpoint(pipeline)
        recorder = tx.create_recorder_endpoint(pipeline, f"file://{tmp_path}/t.webm",
                                               media_profile="WEBM_AUDIO_ONLY")
        connected = tx.connect(endpoint, recorder, "AUDIO")
        assert endpoint.id == "newref:1"
        await tx.commit()
        assert connected.done and connected.value is None
        assert pipeline.id.endswith("_kurento.MediaPipeline")
        assert endpoint.id.startswith(pipeline.id + "/")
        assert recorder.id.startswith(pipeline.id + "/")
        assert await ServerManager(client).get_pipelines() == [pipeline.id]
        if isinstance(backend, ScriptedKms):
            ops = [(m, p) for i, m, p in backend.requests if str(i).startswith("tx/")]
            assert ops[1] == ("create", {"type": "WebRtcEndpoint", "properties": {},
                                         "constructorParams": {"mediaPipeline": pipeline.id}})
            assert ops[3][1]["object"] == endpoint.id
            assert ops[3][1]["operationParams"] == {"sink": recorder.id, "mediaType": "AUDIO"}
        await pipeline.release()


async def test_a_failed_op_raises_its_typed_error_and_the_ops_after_it_do_not_run(
    kms: tuple[str, Any],
) -> None:
    """A failed operation raises its typed error; later ones are not run and leave no handler."""
    url, backend = kms
    if isinstance(backend, ScriptedKms):
        backend.errors["processOffer"] = (40201, "Empty offer not valid", None)
    async with KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        endpoint = await pipeline.create_webrtc_endpoint()
        tx = Transaction(client)
        before = tx.subscribe(endpoint, IceCandidateFound, lambda e: None)
        answer = tx.process_offer(endpoint, "")
        after = tx.subscribe(endpoint, IceGatheringDone, lambda e: None)
        gathered = tx.gather_candidates(endpoint)
        with pytest.raises(SdpError) as info:
            await tx.commit()
        assert info.value.code == 40201 and info.value.data_type == "SDP_PARSE_ERROR"
        assert info.value.operation == "op 1 invoke processOffer"
        assert before.done and before.value.event_type == "IceCandidateFound"
        with pytest.raises(SdpError):
            answer.value  # noqa: B018 - reading it raises
        for pending in (after, gathered):
            assert not pending.done
            with pytest.raises(OperationNotRun):
                pending.value  # noqa: B018
        # The handler of the subscription that never happened is gone; the other stays.
        assert client.handler_count == 1
        await pipeline.release()
        assert client.handler_count == 0


async def test_a_subscription_in_a_transaction_gets_the_events_of_its_later_ops() -> None:
    """Embedded server: real candidates are raised while the transaction is still running."""
    async with run_mediaserver() as (url, _), KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        endpoint = await pipeline.create_webrtc_endpoint()
        peer = Peer(video=False)
        try:
            found: list[KurentoEvent] = []
            done: list[KurentoEvent] = []
            tx = Transaction(client)
            tx.subscribe(endpoint, IceCandidateFound, found.append)
            tx.subscribe(endpoint, IceGatheringDone, done.append)
            answer = tx.process_offer(endpoint, await peer.offer())
            tx.gather_candidates(endpoint)
            await tx.commit()
            assert answer.value.startswith("v=0")
            await wait_until(lambda: done, describe=lambda: found)
            assert found and all(isinstance(e, IceCandidateFound) for e in found)
        finally:
            await peer.close()
            await pipeline.release()


async def test_an_object_of_another_uncommitted_transaction_is_refused(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """A `newref:` id means something only inside its own transaction."""
    url, _ = scripted
    async with KurentoClient(url) as client:
        tx = Transaction(client)
        pipeline = tx.create_pipeline()
        other = Transaction(client)
        with pytest.raises(ValueError, match="another, uncommitted transaction"):
            other.create_webrtc_endpoint(pipeline)
        await tx.commit()
        await pipeline.release()


async def test_reconnect_to_the_embedded_server_keeps_the_session_and_its_subscriptions(
    tmp_path: Path,
) -> None:
    """The embedded server behind a proxy that cuts every socket, as a network would."""
    async with run_mediaserver(recordings_root=tmp_path) as (upstream, _), \
            run_kurento_proxy(upstream) as (url, proxy), \
            KurentoClient(url, reconnect_delays=(0.01,)) as client:
        lost: list[SessionLoss] = []
        client.on_session_lost(lost.append)
        session = client.session_id
        kept = await MediaPipeline.create(client)
        created: asyncio.Queue[KurentoEvent] = asyncio.Queue()
        await ServerManager(client).subscribe(ObjectCreated, created.put_nowait)
        await proxy.drop_connections()
        await wait_until(lambda: proxy.sockets == 2 and client.connected,
                         describe=lambda: (proxy.sockets, client.connected))
        assert client.session_id == session and lost == []
        resume = [f.message for f in proxy.frames if f.message.get("method") == "connect"][-1]
        assert resume["params"] == {"sessionId": session}
        # The subscription made before the cut still delivers, without a new subscribe.
        fresh = await MediaPipeline.create(client)
        event = await within(created.get(), 5, "ObjectCreated after reconnect")
        assert event.raw["object"] == fresh.id
        assert sorted(await ServerManager(client).get_pipelines()) == sorted([kept.id, fresh.id])
        ids = [f.message["id"] for f in proxy.frames if f.direction == ">"]
        assert len(ids) == len(set(ids)), "a request id was reused within the session"


async def test_a_restart_of_the_embedded_server_is_reported_as_session_loss(
    tmp_path: Path,
) -> None:
    """A restarted embedded media server is reported as a lost session with its objects gone."""
    async with run_mediaserver(recordings_root=tmp_path) as (first, _), \
            run_kurento_proxy(first) as (url, proxy), \
            KurentoClient(url, reconnect_delays=(0.01,)) as client:
        lost: list[SessionLoss] = []
        client.on_session_lost(lost.append)
        old, old_server = client.session_id, client.server_id
        pipeline = await MediaPipeline.create(client)
        async with run_mediaserver(recordings_root=tmp_path) as (second, _):
            proxy.upstream = second  # a new process: new serverId, no sessions, no objects
            await proxy.drop_connections()
            await wait_until(lambda: lost and client.connected, describe=lambda: lost)
            assert [(x.session_id, x.restarted) for x in lost] == [(old, True)]
            assert client.session_id not in (None, old) and client.server_id != old_server
            with pytest.raises(ObjectNotFound):
                await MediaObject(client, pipeline.id).invoke("getName")


# ---------------------------------------------------------------- scripted-only behaviour


async def test_requests_are_not_lock_step(scripted: tuple[str, ScriptedKms]) -> None:
    """A fast request is answered while twenty slow ones are still pending."""
    url, kms = scripted
    kms.delays["getUsedMemory"] = scaled(2.0)
    async with KurentoClient(url) as client:
        manager = ServerManager(client)
        slow = [asyncio.create_task(manager.get_used_memory()) for _ in range(20)]
        await wait_until(lambda: sum(1 for r in kms.requests if r[2].get("operation")
                                     == "getUsedMemory") == 20,
                         describe=lambda: len(kms.requests))
        # Every slow request reached the server before any was answered.
        assert not any(t.done() for t in slow)
        kms.values["getUsedMemory"] = 1
        assert await manager.get_pipelines() == []
        assert not any(t.done() for t in slow), "a fast reply waited for slow ones"
        for t in slow:
            t.cancel()


async def test_a_request_times_out_and_a_late_reply_is_ignored(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """A request times out with RequestTimeout; its late reply is ignored and the link works on."""
    url, kms = scripted
    kms.delays["getUsedMemory"] = scaled(0.5)
    kms.values["getUsedMemory"] = 42
    async with KurentoClient(url, request_timeout=scaled(0.1)) as client:
        with pytest.raises(RequestTimeout):
            await ServerManager(client).get_used_memory()
        kms.delays.clear()
        await asyncio.sleep(scaled(0.6))  # let the late reply arrive: nothing must break
        assert await ServerManager(client).get_used_memory() == 42


async def test_an_event_sent_before_the_subscribe_reply_is_delivered(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """An event the server sends before its subscribe reply still reaches the subscriber."""
    url, kms = scripted
    kms.emit_before_reply["MediaFlowInStateChanged"] = {
        "state": "FLOWING", "mediaType": "VIDEO", "padName": "default"}
    async with KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        endpoint = await pipeline.create_webrtc_endpoint()
        got: list[KurentoEvent] = []
        await endpoint.subscribe(MediaFlowInStateChanged, got.append)
        await wait_until(lambda: got, describe=lambda: got)
        assert isinstance(got[0], MediaFlowInStateChanged) and got[0].flowing
        assert got[0].media_type == "VIDEO"


async def test_reconnect_keeps_the_session_and_its_subscriptions(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """A dropped socket resumes its session and subscriptions; no request id is reused."""
    url, kms = scripted
    lost: list[SessionLoss] = []
    async with KurentoClient(url, reconnect_delays=(0.01,)) as client:
        client.on_session_lost(lost.append)
        session = client.session_id
        pipeline = await MediaPipeline.create(client)
        endpoint = await pipeline.create_webrtc_endpoint()
        events: asyncio.Queue[KurentoEvent] = asyncio.Queue()
        await endpoint.subscribe(MediaFlowInStateChanged, events.put_nowait)
        await kms.drop_connections()
        await wait_until(lambda: kms.connections == 2 and client.connected,
                         describe=lambda: (kms.connections, client.connected))
        assert client.session_id == session and lost == []
        resume = [r for r in kms.requests if r[1] == "connect"][-1]
        assert resume[2] == {"sessionId": session}
        assert await kms.emit(endpoint.id, "MediaFlowInStateChanged",
                              {"state": "FLOWING", "mediaType": "AUDIO"}) == 1
        event = await within(events.get(), 5, "event after reconnect")
        assert isinstance(event, MediaFlowInStateChanged)
        await ServerManager(client).get_pipelines()
        ids = [r[0] for r in kms.requests if r[1] != "connect" or r[2]]
        assert len(ids) == len(set(ids)), "a request id was reused within the session"


async def test_a_server_restart_is_reported_as_session_loss(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """A server restart is reported once as a lost session, and the old objects are gone."""
    url, kms = scripted
    lost: list[SessionLoss] = []
    async with KurentoClient(url, reconnect_delays=(0.01,)) as client:
        client.on_session_lost(lost.append)
        old = client.session_id
        pipeline = await MediaPipeline.create(client)
        kms.restart()
        await kms.drop_connections()
        await wait_until(lambda: lost and client.connected, describe=lambda: (lost, client))
        assert [(x.session_id, x.restarted) for x in lost] == [(old, True)]
        assert client.session_id not in (None, old)
        with pytest.raises(ObjectNotFound):
            await MediaObject(client, pipeline.id).invoke("getName")
        kms.violations.clear()  # getName on a vanished object was the point


async def test_an_unanswered_ping_drops_the_socket_and_reconnects(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """An unanswered ping drops the socket; the client reconnects once the server answers."""
    url, kms = scripted
    async with KurentoClient(url, ping_interval=0.05, ping_timeout=0.3,
                             reconnect_delays=(0.01,)) as client:
        kms.silent = True
        await wait_until(lambda: not client.connected, describe=lambda: kms.requests[-3:])
        kms.silent = False
        await wait_until(lambda: client.connected, describe=lambda: kms.connections)
        assert kms.connections >= 2


async def test_every_wrapper_sends_what_kmd_declares(scripted: tuple[str, ScriptedKms]) -> None:
    """Each typed method once, so the scripted server checks its request against kmd.json."""
    url, kms = scripted
    kms.values |= {"getUsedMemory": 1024, "getUsedCpu": 1.5, "getInfo": {"version": "7.3.0"},
                   "processOffer": "v=0", "generateOffer": "v=0", "processAnswer": "v=0",
                   "getStats": {}, "isMediaFlowingIn": True, "isMediaFlowingOut": False}
    async with KurentoClient(url) as client:
        manager = ServerManager(client)
        assert await manager.get_used_memory() == 1024
        assert await manager.get_used_cpu(50) == 1.5
        assert (await manager.get_info())["version"] == "7.3.0"
        pipeline = await MediaPipeline.create(client)
        offerer = await pipeline.create_webrtc_endpoint(sendonly=True)
        answerer = await pipeline.create_webrtc_endpoint(recvonly=True)
        recorder = await pipeline.create_recorder_endpoint("file:///tmp/r.webm",
                                                           stop_on_end_of_stream=True)
        player = await pipeline.create_player_endpoint("file:///tmp/p.webm")
        assert await offerer.generate_offer() == "v=0"
        assert await offerer.process_answer("v=0") == "v=0"
        assert await answerer.process_offer("v=0") == "v=0"
        await answerer.gather_candidates()
        await answerer.add_ice_candidate("candidate:1 1 udp 1 192.0.2.1 9 typ host", "0", 0)
        await answerer.set_turn_url("u:p@127.0.0.1:3478")
        await answerer.set_stun_server_address("127.0.0.1")
        await answerer.set_stun_server_port(3478)
        assert await answerer.is_media_flowing_in("AUDIO") is True
        assert await answerer.is_media_flowing_out("VIDEO") is False
        assert await answerer.get_stats("VIDEO") == {} and await answerer.get_stats() == {}
        await player.connect(recorder, "VIDEO")
        await player.disconnect(recorder, "VIDEO")
        await player.play()
        await player.stop()
        for step in (recorder.record, recorder.pause, recorder.stop, recorder.stop_and_wait):
            await step()
        subscription = await recorder.subscribe(Recording, lambda e: None)
        await subscription.cancel()
        await pipeline.release()
    assert kms.violations == []
    assert [p for _, m, p in kms.requests if m == "unsubscribe"] == [
        {"object": recorder.id, "subscription": subscription.id,
         "sessionId": kms.requests[-1][2]["sessionId"]}]


async def test_a_server_that_answers_with_another_server_id_lost_our_objects(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """A restart can also show as a new serverId on a session the server accepted."""
    url, kms = scripted
    async with KurentoClient(url, reconnect_delays=(0.01,)) as client:
        lost: list[SessionLoss] = []
        client.on_session_lost(lost.append)
        session = client.session_id
        kms.server_id = "another-process"
        await kms.drop_connections()
        await wait_until(lambda: lost and client.connected, describe=lambda: lost)
        assert [(x.session_id, x.restarted) for x in lost] == [(session, True)]
        assert client.server_id == "another-process"


async def test_a_composite_mixes_through_hub_ports(scripted: tuple[str, ScriptedKms]) -> None:
    """Scripted server only: the embedded media server does not implement Composite (its
    recordings are composed afterwards with ffmpeg instead)."""
    url, kms = scripted
    async with KurentoClient(url) as client:
        pipeline = await MediaPipeline.create(client)
        composite = await pipeline.create_composite(width=1280, height=720)
        ports = [await composite.create_port() for _ in range(2)]
        endpoint = await pipeline.create_webrtc_endpoint()
        await endpoint.connect(ports[0])
        await ports[1].connect(endpoint, "VIDEO")
        await pipeline.release()
    created = [(params["type"], params["constructorParams"]) for _, method, params
               in kms.requests if method == "create"]
    assert ("Composite", {"mediaPipeline": pipeline.id, "width": 1280, "height": 720}) \
        in created
    assert [p for t, p in created if t == "HubPort"] == [{"hub": composite.id}] * 2


# ---------------------------------------------------------------- KMS 7.3 source fidelity


async def test_one_transaction_creates_subscribes_and_gets_the_events_raised_before_its_reply(
) -> None:
    """Embedded server: create, subscribe on `newref:` ids, offer and gather in ONE
    transaction; candidates raised before the reply reach the handler all the same."""
    async with run_mediaserver() as (url, _), KurentoClient(url) as client:
        peer = Peer(video=False)
        try:
            found: list[KurentoEvent] = []
            done: list[KurentoEvent] = []
            tx = Transaction(client)
            pipeline = tx.create_pipeline()
            endpoint = tx.create_webrtc_endpoint(pipeline)
            tx.subscribe(endpoint, IceCandidateFound, found.append)
            tx.subscribe(endpoint, IceGatheringDone, done.append)
            answer = tx.process_offer(endpoint, await peer.offer())
            tx.gather_candidates(endpoint)
            await tx.commit()
            assert answer.value.startswith("v=0")
            assert not endpoint.id.startswith("newref:")
            await wait_until(lambda: done, describe=lambda: found)
            assert found and all(e.object_id == endpoint.id for e in found)
        finally:
            await peer.close()
            await MediaObject(client, pipeline.id).release()


async def test_an_event_sent_before_a_transactions_reply_reaches_a_newref_subscriber(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """Scripted: the event goes out before the transaction's reply, deterministically."""
    url, kms = scripted
    kms.emit_before_reply["MediaFlowInStateChanged"] = {"state": "FLOWING",
                                                        "mediaType": "AUDIO"}
    async with KurentoClient(url) as client:
        got: list[KurentoEvent] = []
        tx = Transaction(client)
        pipeline = tx.create_pipeline()
        endpoint = tx.create_webrtc_endpoint(pipeline)
        tx.add_tag(pipeline, "telemed.call", "c1")
        tx.subscribe(endpoint, MediaFlowInStateChanged, got.append)
        await tx.commit()
        await wait_until(lambda: got)
        assert got[0].object_id == endpoint.id
        assert client.handler_count == 1
        await MediaObject(client, pipeline.id).release()


async def test_a_ping_queued_behind_slow_requests_keeps_a_healthy_socket(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """KMS answers a socket in order: pings wait behind 3 s of requests, the socket stays."""
    url, kms = scripted
    kms.serial = True
    kms.delays["getUsedMemory"] = scaled(0.5)
    kms.values["getUsedMemory"] = 1
    async with KurentoClient(url, ping_interval=0.1, ping_timeout=scaled(1.2),
                             reconnect_delays=(0.01,)) as client:
        manager = ServerManager(client)
        got = await within(asyncio.gather(*(manager.get_used_memory() for _ in range(6))),
                           20, "six queued requests")
        assert got == [1] * 6
        assert kms.connections == 1, "a healthy, busy socket was dropped"
        pings = [r for r in kms.requests if r[1] == "ping"]
        assert pings, "no ping went out while the requests queued"


async def test_a_forgotten_session_on_the_same_server_is_not_a_restart(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """40007 with an unchanged serverId: session lost, objects possibly still running."""
    url, kms = scripted
    async with KurentoClient(url, reconnect_delays=(0.01,)) as client:
        lost: list[SessionLoss] = []
        client.on_session_lost(lost.append)
        session = client.session_id
        kms.sessions.clear()  # collected by the server's GC; the process is the same
        await kms.drop_connections()
        await wait_until(lambda: lost and client.connected, describe=lambda: lost)
        assert [(x.session_id, x.restarted) for x in lost] == [(session, False)]
        assert client.session_id != session


async def test_a_resumed_session_tells_its_listeners_so_they_reread_state(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """Events of the gap are dropped by KMS: a resume must be visible to callers."""
    url, kms = scripted
    async with KurentoClient(url, reconnect_delays=(0.01,)) as client:
        resumed: list[str] = []
        lost: list[SessionLoss] = []
        client.on_resumed(resumed.append)
        client.on_session_lost(lost.append)
        session = client.session_id
        await kms.drop_connections()
        await wait_until(lambda: resumed, describe=lambda: (resumed, lost))
        assert resumed == [session] and lost == []


async def test_a_close_cancelled_while_the_socket_says_goodbye_still_ends_its_session(
    scripted: tuple[str, ScriptedKms],
) -> None:
    """close() cancelled mid-way (a sweep stopped as its run finished) still closes the HTTP
    session it opened, and the cancellation reaches the caller: no session is left for a
    later test's garbage collection to warn about."""
    url, _ = scripted
    client = KurentoClient(url)
    await client.connect()
    http = client._http
    assert http is not None
    closing = asyncio.ensure_future(client.close())
    await asyncio.sleep(0)  # its close frame is out; it waits for the server's
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert http.closed


async def test_a_connect_that_fails_keeps_no_session_open() -> None:
    """Nobody listens: connect() raises and leaves no HTTP session of its own open (an
    `async with` whose connect fails never calls close)."""
    client = KurentoClient(f"ws://127.0.0.1:{free_port()}/kurento")
    with pytest.raises(OSError):
        await client.connect()
    assert client._http is None
