"""`CallMedia` against what KMS 7.3's source says it does (KMS-SOURCE-NOTES.md), on the
scripted Kurento where the embedded server cannot show the behaviour on demand: a
refused candidate mid-transaction, warnings raised as `Error`, a resumed session whose
events were dropped, a transaction whose reply never came."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import RequestTimeout
from kurento_ctl.pool import KurentoPool
from signaling.candidates import CandidateFilter
from signaling.media import CallMedia, MediaListener
from tests.helpers import scaled, wait_until
from tests.kurento_fixtures import ScriptedKms, run_kurento_proxy, run_scripted_kms

BOTH = frozenset({"audio", "video"})
OFFER = "v=0\r\n"


def candidate(n: int) -> dict[str, Any]:
    return {"candidate": f"candidate:{n} 1 udp 2122260223 192.0.2.{n} 9 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}


@dataclass
class Heard:
    flows: set[tuple[str, str, str, str, bool]] = field(default_factory=set)
    recording: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    ice: list[tuple[str, str, str]] = field(default_factory=list)

    def listener(self) -> MediaListener:
        return MediaListener(
            candidate=lambda *_: None,
            flow=lambda *flow: self.flows.add(flow),
            recording=self.recording.append,
            failure=lambda pid, part, what: self.failures.append((pid, f"{part}: {what}")),
            ice_state=lambda *state: self.ice.append(state),
            dropped=lambda *_: None,
        )


async def started(url: str, **client: Any) -> KurentoPool:
    pool = KurentoPool([url], health_interval=scaled(60),
                       client_factory=lambda u: KurentoClient(u, reconnect_delays=(0.01,),
                                                              **client))
    await pool.start()
    return pool


def scripted_answers(kms: ScriptedKms) -> None:
    kms.values["processOffer"] = OFFER


def objects_of(kms: ScriptedKms, cls: str) -> list[str]:
    return [o for o, c in kms.objects.items() if c == cls]


async def test_candidates_after_a_refused_one_are_sent_again_on_their_own(
    tmp_path: Path,
) -> None:
    """A 40401 stops KMS's transaction: the buffered candidates after it are re-sent."""
    async with run_scripted_kms() as (url, kms):
        scripted_answers(kms)
        kms.fail_once["addIceCandidate"] = (40401, "Error adding candidate", None)
        pool = await started(url)
        try:
            media = CallMedia("c1", pool, tmp_path, Heard().listener(), CandidateFilter())
            for n in (7, 8, 9):
                await media.add_candidate("alice", "publish", candidate(n))
            assert await media.publish("alice", OFFER, BOTH) == OFFER

            def alone() -> list[str]:
                return [p["operationParams"]["candidate"]["candidate"]
                        for rid, m, p in kms.requests if m == "invoke"
                        and p.get("operation") == "addIceCandidate"
                        and not str(rid).startswith("tx/")]

            await wait_until(lambda: len(alone()) == 2, describe=alone)
            assert alone() == [candidate(8)["candidate"], candidate(9)["candidate"]]
            await media.close()
        finally:
            await pool.close()
        assert kms.violations == []


async def test_only_resource_errors_fail_a_recording(tmp_path: Path) -> None:
    """KMS raises `Error` for GStreamer warnings too: those are noted, not a failure."""
    async with run_scripted_kms() as (url, kms):
        scripted_answers(kms)
        pool = await started(url)
        heard = Heard()
        try:
            media = CallMedia("c1", pool, tmp_path, heard.listener(), CandidateFilter())
            await media.publish("alice", OFFER, BOTH)
            [recorder] = objects_of(kms, "RecorderEndpoint")
            await kms.emit(recorder, "Error", {"type": "UNEXPECTED_ELEMENT_ERROR",
                                               "errorCode": 2, "description": "a warning"})
            await kms.emit(recorder, "Error", {"type": "RESOURCE_ERROR_NO_SPACE_LEFT",
                                               "errorCode": 14, "description": "disk full"})
            await wait_until(lambda: len(heard.failures) == 2, describe=lambda: heard.failures)
            assert [w.split(":")[0] for _, w in heard.failures] == ["recorder-warning",
                                                                    "recorder"]
            assert "RESOURCE_ERROR_NO_SPACE_LEFT" in heard.failures[1][1]
            await media.close()
        finally:
            await pool.close()


async def test_state_is_read_again_after_a_resumed_session(tmp_path: Path) -> None:
    """KMS drops the events raised while a session had no socket: they are re-read."""
    async with run_scripted_kms() as (url, kms):
        scripted_answers(kms)
        pool = await started(url)
        heard = Heard()
        try:
            media = CallMedia("c1", pool, tmp_path, heard.listener(), CandidateFilter())
            await media.publish("alice", OFFER, BOTH)
            # Meanwhile, with no socket to tell it to, the media started and ICE connected.
            kms.values |= {"isMediaFlowingIn": True, "isMediaFlowingOut": False,
                           "getState": "START",
                           "getIceConnectionState": [{"__module__": "kurento",
                                                      "__type__": "IceConnection",
                                                      "streamId": "1", "componentId": 1,
                                                      "state": "CONNECTED"}]}
            await kms.drop_connections()
            await wait_until(lambda: heard.recording == ["alice"]
                             and ("alice", "publish", "in", "video", True) in heard.flows
                             and ("alice", "publish", "CONNECTED") in heard.ice,
                             describe=lambda: (heard.recording, heard.flows, heard.ice))
            assert not [f for f in heard.flows if not f[4]], "never-flowing media announced"
            await media.close()
        finally:
            await pool.close()
        assert kms.violations == []


async def test_a_calls_stop_and_waits_go_one_at_a_time(tmp_path: Path) -> None:
    """KMS serves a socket in order: a burst of stopAndWaits only blocks the socket, even
    when a participant leaves while the call closes."""
    async with run_scripted_kms() as (upstream, kms), \
            run_kurento_proxy(upstream) as (url, proxy):
        scripted_answers(kms)
        kms.delays["stopAndWait"] = scaled(0.1)
        pool = await started(url)
        try:
            media = CallMedia("c1", pool, tmp_path, Heard().listener(), CandidateFilter())
            await media.publish("alice", OFFER, BOTH)
            await media.publish("bob", OFFER, BOTH)
            await media.publish("carol", OFFER, BOTH)
            mark = proxy.mark()
            await asyncio.gather(media.remove("carol"), media.close())
        finally:
            await pool.close()
        waiting: set[tuple[int, Any]] = set()
        most = 0
        for frame in proxy.frames[mark:]:
            key = (frame.socket, frame.message.get("id"))
            if frame.direction == ">" and (frame.message.get("params") or {}).get(
                    "operation") == "stopAndWait":
                waiting.add(key)
                most = max(most, len(waiting))
            elif frame.direction == "<":
                waiting.discard(key)
        assert most == 1


async def test_a_transaction_without_a_reply_is_found_by_its_tags_and_released(
    tmp_path: Path,
) -> None:
    """The reply never came, yet KMS ran the creates: the call's close releases them."""
    async with run_scripted_kms() as (url, kms):
        scripted_answers(kms)
        kms.delays["processOffer"] = scaled(1.0)
        pool = await started(url, request_timeout=scaled(0.3))
        try:
            media = CallMedia("c1", pool, tmp_path, Heard().listener(), CandidateFilter())
            with pytest.raises(RequestTimeout):
                await media.publish("alice", OFFER, BOTH)
            assert media.pipeline is None and media.uncertain
            [orphan] = objects_of(kms, "MediaPipeline")
            assert kms.tags[orphan]["telemed.call"] == "c1"
            await media.close()
            assert orphan not in kms.objects
        finally:
            await pool.close()
