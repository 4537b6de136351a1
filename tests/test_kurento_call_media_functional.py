"""`CallMedia` (signaling/media.py) against real media servers, counting round trips.

One sequential media-server round trip from `publish` (or `subscribe`) to the SDP answer,
pipeline creation included: KMS resolves `newref:` ids in `subscribe` ops, and the client
keeps the events of not-yet-known ids until the reply names them. A logging WebSocket
proxy sits between the pool and the media server, so the count is what went over the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kurento_ctl.errors import KurentoError
from kurento_ctl.pool import KurentoPool
from signaling.candidates import CandidateFilter
from signaling.errors import MediaError
from signaling.media import CallMedia, MediaListener
from tests.helpers import scaled, wait_until, within
from tests.kurento_fixtures import KurentoProxy, run_kurento_proxy, run_scripted_kms
from tests.media_fixtures import Peer, run_mediaserver

EARLY = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.7 9 typ host", "sdpMid": "0",
         "sdpMLineIndex": 0}
BOTH = frozenset({"audio", "video"})


@dataclass
class Heard:
    candidates: list[tuple[str, str]] = field(default_factory=list)
    flows: set[tuple[str, str, str, str, bool]] = field(default_factory=set)
    recording: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def listener(self) -> MediaListener:
        return MediaListener(
            candidate=lambda owner, target, _c: self.candidates.append((owner, target)),
            flow=lambda *flow: self.flows.add(flow),
            recording=self.recording.append,
            failure=lambda pid, part, what: self.failures.append((pid, f"{part}: {what}")),
            ice_state=lambda *_: None,
            dropped=lambda *_: None,
        )


@pytest.fixture
async def pool_through_proxy(tmp_path: Path) -> AsyncIterator[tuple[KurentoPool, KurentoProxy,
                                                                   Any]]:
    async with run_mediaserver(recordings_root=tmp_path) as (upstream, server), \
            run_kurento_proxy(upstream) as (url, proxy):
        pool = KurentoPool([url], health_interval=scaled(60))
        await pool.start()
        try:
            yield pool, proxy, server
        finally:
            await pool.close()


def _ops(proxy: KurentoProxy, since: int) -> list[list[tuple[str, str]]]:
    """(method, operation or type) of each transaction's ops sent since `since`."""
    out = []
    for request in proxy.requests(since):
        if request.get("method") == "transaction":
            out.append([(op["method"], op["params"].get("operation")
                         or op["params"].get("type")) for op in request["params"]["operations"]])
    return out


async def test_publish_and_subscribe_answer_in_one_round_trip_and_media_flows(
    pool_through_proxy: tuple[KurentoPool, KurentoProxy, Any], tmp_path: Path,
) -> None:
    """One transaction per offer, pipeline and tags included; media and events still flow."""
    pool, proxy, server = pool_through_proxy
    heard = Heard()
    media = CallMedia("c1", pool, tmp_path / "c1", heard.listener(), CandidateFilter(),
                      node_id="node-a")
    alice, bob = Peer(), Peer(audio=False, video=False)
    bob.pc.addTransceiver("audio", direction="recvonly")
    bob.pc.addTransceiver("video", direction="recvonly")
    try:
        await media.add_candidate("alice", "publish", EARLY)  # before any endpoint: buffered
        mark = proxy.mark()
        answer = await media.publish("alice", await alice.offer(), BOTH)
        assert proxy.sequential_round_trips(mark) == 1, proxy.requests(mark)
        [ops] = _ops(proxy, mark)
        assert ops[:9] == [("create", "MediaPipeline"), ("invoke", "addTag"),
                           ("invoke", "addTag"), ("create", "WebRtcEndpoint"),
                           ("invoke", "addTag"), ("invoke", "addTag"),
                           ("create", "RecorderEndpoint"), ("invoke", "addTag"),
                           ("invoke", "addTag")]
        methods = [m for m, _ in ops[9:]]
        names = [n for _, n in ops[9:]]
        # Every subscription before anything that could raise its event.
        assert set(methods[:8]) == {"subscribe"} and "subscribe" not in methods[8:]
        assert {"Recording", "IceCandidateFound", "MediaFlowOutStateChanged",
                "NewCandidatePairSelected"} <= set(names[:8])
        assert names[8:] == ["connect", "record", "processOffer", "gatherCandidates",
                             "addIceCandidate"]
        flushed = proxy.requests(mark)[-1]["params"]["operations"][-1]["params"]
        assert flushed["operationParams"]["candidate"]["candidate"] == EARLY["candidate"]
        tags = set(server.states[media.pipeline_id].tags.items())
        assert tags == {("telemed.call", "c1"), ("telemed.node", "node-a")}
        await alice.accept(answer)

        mark = proxy.mark()
        answer = await media.subscribe("bob", "alice", await bob.offer())
        assert proxy.sequential_round_trips(mark) == 1, proxy.requests(mark)
        [ops] = _ops(proxy, mark)
        assert ops[:3] == [("create", "WebRtcEndpoint"), ("invoke", "addTag"),
                           ("invoke", "addTag")]
        assert [n for _, n in ops][9:] == ["connect", "processOffer", "gatherCandidates"]
        await bob.accept(answer)

        await within(bob.got_media["video"].wait(), 20, "alice's video at bob")
        await wait_until(lambda: heard.recording == ["alice"]
                         and ("bob", "alice", "in", "video", True) in heard.flows
                         and ("alice", "publish", "out", "audio", True) in heard.flows,
                         timeout=20, describe=lambda: (heard.recording, heard.flows))
        assert ("alice", "publish") in heard.candidates and heard.failures == []
    finally:
        await media.close()
        await alice.close()
        await bob.close()
    assert await server.manager.methods()["getPipelines"].handler({}) == []
    assert (tmp_path / "c1" / "alice.webm").stat().st_size > 0


async def test_a_refused_offer_is_sdp_invalid_and_a_failed_creation_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A failed creation releases its pipeline; an offer Kurento rejects is `sdp.invalid`."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(60))
        await pool.start()
        try:
            media = CallMedia("c2", pool, tmp_path, Heard().listener(), CandidateFilter())
            kms.errors["create RecorderEndpoint"] = (40108, "Factory 'RecorderEndpoint' not "
                                                     "found", None)
            with pytest.raises(KurentoError):
                await media.publish("alice", "v=0\r\n", BOTH)
            # The pipeline the same transaction created was released again.
            assert "MediaPipeline" not in kms.objects.values()
            assert media.pipeline is None
            del kms.errors["create RecorderEndpoint"]

            kms.errors["processOffer"] = (40201, "Error parsing SDP", None)
            with pytest.raises(MediaError) as info:
                await media.publish("bob", "v=0\r\n", BOTH)
            assert info.value.code == "sdp.invalid"
            assert "Error parsing SDP" in str(info.value)
            await media.close()
            assert "MediaPipeline" not in kms.objects.values()
        finally:
            await pool.close()
        assert kms.violations == []


async def test_a_publish_cancelled_while_the_pipeline_is_made_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """The hub cancels a participant's work when its socket goes; the pipeline the server
    made meanwhile must still be released with the call."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(60))
        await pool.start()
        try:
            media = CallMedia("c3", pool, tmp_path, Heard().listener(), CandidateFilter())
            kms.delays["create MediaPipeline"] = scaled(0.3)
            publish = asyncio.create_task(media.publish("alice", "v=0\r\n", BOTH))
            await wait_until(lambda: any(m == "create" for _, m, _ in kms.requests),
                             describe=lambda: kms.requests)
            publish.cancel()
            with pytest.raises(asyncio.CancelledError):
                await publish
            await wait_until(lambda: media.pipeline is not None, describe=lambda: kms.objects)
            await media.close()
            assert "MediaPipeline" not in kms.objects.values(), kms.objects
        finally:
            await pool.close()
        assert kms.violations == []
