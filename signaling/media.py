"""`CallMedia`: one call's Kurento pipeline, endpoints and recorders.

Topology: each participant publishes through one WebRtcEndpoint whose stream is also
connected to its own RecorderEndpoint; each viewer receives each other participant through
a WebRtcEndpoint connected from that participant's publisher. `close()` ends every recorder
with `stopAndWait` before the pipeline is released, whatever happened before.

An offer is answered in two media-server round trips, each one Kurento `transaction`:
1. create the endpoint (and the publisher's recorder; and the pipeline, for the call's
   first endpoint);
2. subscribe every event we rely on, connect, record, `processOffer`, `gatherCandidates`,
   and the candidates buffered meanwhile. Ops run in order, so the subscriptions come
   before anything that could raise their events; KMS does not replay events.
Subscriptions need the object's id, hence the first round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioice import Candidate

from kurento_ctl.errors import KurentoError, RpcError, SdpError
from kurento_ctl.events import (
    Error,
    IceCandidateFound,
    IceComponentStateChanged,
    KurentoEvent,
    MediaFlowInStateChanged,
    MediaFlowOutStateChanged,
    NewCandidatePairSelected,
    Recording,
)
from kurento_ctl.objects import (
    MediaPipeline,
    MediaProfile,
    MediaType,
    RecorderEndpoint,
    WebRtcEndpoint,
)
from kurento_ctl.pool import KurentoPool, PooledServer
from kurento_ctl.transaction import Transaction
from signaling.candidates import CandidateBuffer, CandidateFilter
from signaling.errors import MediaError

__all__ = ["CallMedia", "MediaListener"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # KMS's stopAndWait caps itself at 4 s; ours covers the RPC on top


@dataclass
class MediaListener:
    """What the hub wants to hear about; every callback is plain and must not block."""

    candidate: Callable[[str, str, dict[str, Any]], None]  # viewer, target, candidate
    flow: Callable[[str, str, str, str, bool], None]  # endpoint owner, target, dir, kind, on
    recording: Callable[[str], None]  # participant whose recorder started
    failure: Callable[[str, str], None]  # participant, description
    ice_state: Callable[[str, str, str], None]  # participant, target, state
    dropped: Callable[[str, str, list[str]], None]  # participant, direction, reasons
    #: participant, target, the browser's end of the selected ICE pair ("relay/udp")
    pair: Callable[[str, str, str], None] = lambda *_: None


def candidate_kind(line: str) -> str:
    """`<type>/<transport>` of an ICE candidate line: which network a browser came from."""
    try:
        c = Candidate.from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
    except (ValueError, IndexError):
        return "unknown"
    return f"{c.type}/{c.transport.lower()}"


@dataclass
class Endpoints:
    publisher: WebRtcEndpoint | None = None
    recorder: RecorderEndpoint | None = None
    recorder_path: Path | None = None
    subscriptions: dict[str, WebRtcEndpoint] = field(default_factory=dict)


class CallMedia:
    def __init__(self, call_id: str, pool: KurentoPool, recordings_dir: Path,
                 listener: MediaListener, candidate_filter: CandidateFilter) -> None:
        self.call_id = call_id
        self.pool = pool
        self.recordings_dir = recordings_dir
        self.listener = listener
        self.filter = candidate_filter
        self.server: PooledServer | None = None
        self.pipeline: MediaPipeline | None = None
        self.participants: dict[str, Endpoints] = {}
        self.buffer = CandidateBuffer()
        self.ice_states: dict[tuple[str, str], str] = {}
        self._pipeline_lock = asyncio.Lock()
        self._closed = False
        self.recordings: list[Path] = []
        self._segments: dict[str, int] = {}

    @property
    def log_extra(self) -> dict[str, str]:
        return {"call_id": self.call_id}

    async def _create(self, recorder: tuple[Path, MediaProfile] | None = None) -> tuple[
            WebRtcEndpoint, RecorderEndpoint | None]:
        """A WebRtcEndpoint (and a recorder) in one round trip, the pipeline included when
        the call has none yet.

        Shielded: a caller cancelled mid-way (its socket went) must not orphan a pipeline
        the server already made; it is kept as the call's, and `close()` releases it.
        """
        return await asyncio.shield(self._create_now(recorder))

    async def _create_now(self, recorder: tuple[Path, MediaProfile] | None) -> tuple[
            WebRtcEndpoint, RecorderEndpoint | None]:
        async with self._pipeline_lock:
            if self._closed:
                raise MediaError("the call is over", code="call.ended")
            if self.pipeline is None:
                server, client = self.pool.placement()
                tx = Transaction(client)
                pipeline = tx.create_pipeline()
                ep, rec = self._elements(tx, pipeline, recorder)
                await self._commit_or_release(tx, [pipeline])
                self.pool.adopt(server, pipeline)
                self.server, self.pipeline = server, pipeline
                log.info("= pipeline %s on %s", pipeline.id, server.url, extra=self.log_extra)
                return ep, rec
            pipeline = self.pipeline
        tx = Transaction(pipeline.client)
        ep, rec = self._elements(tx, pipeline, recorder)
        await self._commit_or_release(tx, [ep] if rec is None else [ep, rec])
        return ep, rec

    @staticmethod
    def _elements(tx: Transaction, pipeline: MediaPipeline,
                  recorder: tuple[Path, MediaProfile] | None) -> tuple[
                      WebRtcEndpoint, RecorderEndpoint | None]:
        ep = tx.create_webrtc_endpoint(pipeline)
        if recorder is None:
            return ep, None
        path, profile = recorder
        return ep, tx.create_recorder_endpoint(pipeline, path.as_uri(), media_profile=profile)

    async def _commit_or_release(self, tx: Transaction, created: list[Any]) -> None:
        """Commits; if an op failed, what the transaction did create is released again."""
        try:
            await tx.commit()
        except KurentoError:
            for obj in created:
                if not obj.id.startswith("newref:"):
                    with contextlib.suppress(KurentoError):
                        await obj.release()
            raise

    def _watch(self, tx: Transaction, ep: WebRtcEndpoint, owner: str, target: str) -> None:
        """Subscribes, in `tx`, every endpoint event we rely on."""

        def on_candidate(e: KurentoEvent) -> None:
            assert isinstance(e, IceCandidateFound)
            verdict = self.filter.judge(e.candidate)
            if not verdict.keep:
                self.listener.dropped(owner, "to-browser", [verdict.reason])
                return
            self.listener.candidate(owner, target, {
                "candidate": e.candidate, "sdpMid": e.sdp_mid, "sdpMLineIndex": e.sdp_mline_index})

        def on_flow(e: KurentoEvent) -> None:
            assert isinstance(e, (MediaFlowInStateChanged, MediaFlowOutStateChanged))
            direction = "in" if isinstance(e, MediaFlowInStateChanged) else "out"
            self.listener.flow(owner, target, direction, e.media_type.lower(), e.flowing)

        def on_ice(e: KurentoEvent) -> None:
            assert isinstance(e, IceComponentStateChanged)
            self.ice_states[(owner, target)] = e.state
            self.listener.ice_state(owner, target, e.state)

        def on_pair(e: KurentoEvent) -> None:
            assert isinstance(e, NewCandidatePairSelected)
            self.listener.pair(owner, target, candidate_kind(e.remote_candidate))

        def on_error(e: KurentoEvent) -> None:
            assert isinstance(e, Error)
            self.listener.failure(owner, f"{e.error_type}: {e.description}")

        tx.subscribe(ep, IceCandidateFound, on_candidate)
        tx.subscribe(ep, MediaFlowInStateChanged, on_flow)
        tx.subscribe(ep, MediaFlowOutStateChanged, on_flow)
        tx.subscribe(ep, IceComponentStateChanged, on_ice)
        tx.subscribe(ep, NewCandidatePairSelected, on_pair)
        tx.subscribe(ep, Error, on_error)

    def _offer(self, owner: str, sdp: str) -> str:
        filtered, reasons = self.filter.filter_sdp(sdp)
        if reasons:
            self.listener.dropped(owner, "from-browser", reasons)
        return filtered

    def _answer(self, owner: str, sdp: str) -> str:
        filtered, reasons = self.filter.filter_sdp(sdp)
        if reasons:
            self.listener.dropped(owner, "to-browser", reasons)
        return filtered

    async def _negotiate(self, tx: Transaction, owner: str, target: str, ep: WebRtcEndpoint,
                         offer: str) -> str:
        """Adds the offer, gathering and the buffered candidates to `tx`; commits it."""
        answer = tx.process_offer(ep, self._offer(owner, offer))
        gathering = tx.gather_candidates(ep)
        for candidate in self.buffer.take(f"{owner}/{target}"):
            args = _candidate_args(candidate)
            if args is not None:
                tx.add_ice_candidate(ep, *args)
        try:
            await tx.commit()
        except SdpError as exc:
            raise MediaError(f"the media server refused the offer: {exc.message}",
                             code="sdp.invalid") from None
        except RpcError as exc:
            if not gathering.done:
                raise
            # Only a buffered candidate was refused: the negotiation itself stands.
            log.warning("! early candidate refused by the media server: %s", exc.message,
                        extra=self.log_extra)
        return self._answer(owner, answer.value)

    def _recording_path(self, participant: str) -> Path:
        """`<id>.webm`, then `<id>.part2.webm`… when the participant rejoined and published
        again, so a rejoin never overwrites what was already recorded."""
        earlier = self._segments.get(participant, 0)
        self._segments[participant] = earlier + 1
        name = f"{participant}.webm" if not earlier else f"{participant}.part{earlier + 1}.webm"
        return self.recordings_dir / name

    async def publish(self, participant: str, offer: str, kinds: frozenset[str], *,
                      turn_url: str | None = None) -> str:
        """Answers a publisher's offer; its recorder is recording (or waiting for media).

        `turn_url` (Kurento's `user:password@<IPv4>:<port>?transport=…`) is the
        participant's own TURN lease, so the endpoint can relay where the browser cannot
        reach it directly."""
        entry = self.participants.setdefault(participant, Endpoints())
        if entry.publisher is not None:
            raise MediaError("already published; leave and join again to renegotiate",
                             code="sdp.invalid")
        profile: MediaProfile = "WEBM" if kinds == {"audio", "video"} else (
            "WEBM_AUDIO_ONLY" if kinds == {"audio"} else "WEBM_VIDEO_ONLY")
        path = self._recording_path(participant)
        path.parent.mkdir(parents=True, exist_ok=True)
        ep, recorder = await self._create((path, profile))
        assert recorder is not None
        # From here on the endpoint exists: later candidates go to it directly, behind the
        # transaction below on the same socket.
        entry.publisher, entry.recorder, entry.recorder_path = ep, recorder, path
        self.recordings.append(path)

        def on_recording(_: KurentoEvent) -> None:
            self.listener.recording(participant)

        def on_recorder_error(e: KurentoEvent) -> None:
            assert isinstance(e, Error)
            self.listener.failure(participant, f"recorder: {e.error_type}: {e.description}")

        tx = Transaction(ep.client)
        self._watch(tx, ep, participant, "publish")
        if turn_url:
            tx.invoke(ep, "setTurnUrl", turnUrl=turn_url)
        tx.subscribe(recorder, Recording, on_recording)
        tx.subscribe(recorder, Error, on_recorder_error)
        media_type: MediaType | None = None if len(kinds) != 1 else (
            "AUDIO" if "audio" in kinds else "VIDEO")
        tx.connect(ep, recorder, media_type)
        tx.record(recorder)
        # Whoever already watches this participant.
        for viewer in self.participants.values():
            if participant in viewer.subscriptions:
                tx.connect(ep, viewer.subscriptions[participant])
        return await self._negotiate(tx, participant, "publish", ep, offer)

    async def subscribe(self, viewer: str, source: str, offer: str, *,
                        turn_url: str | None = None) -> str:
        entry = self.participants.setdefault(viewer, Endpoints())
        if source in entry.subscriptions:
            raise MediaError("already subscribed to that participant", code="sdp.invalid")
        ep, _ = await self._create()
        entry.subscriptions[source] = ep
        tx = Transaction(ep.client)
        self._watch(tx, ep, viewer, source)
        if turn_url:
            tx.invoke(ep, "setTurnUrl", turnUrl=turn_url)
        publisher = self.participants.get(source, Endpoints()).publisher
        if publisher is not None:
            tx.connect(publisher, ep)
        return await self._negotiate(tx, viewer, source, ep, offer)

    def _endpoint_for(self, owner: str, target: str) -> WebRtcEndpoint | None:
        entry = self.participants.get(owner)
        if entry is None:
            return None
        return entry.publisher if target == "publish" else entry.subscriptions.get(target)

    async def add_candidate(self, owner: str, target: str, candidate: dict[str, Any]) -> None:
        verdict = self.filter.judge(str(candidate.get("candidate", "")))
        if not verdict.keep:
            self.listener.dropped(owner, "from-browser", [verdict.reason])
            return
        ep = self._endpoint_for(owner, target)
        if ep is None:
            if not self.buffer.add(f"{owner}/{target}", candidate):
                raise MediaError("too many early candidates", code="candidate.invalid")
            return
        await self._add_candidate(ep, candidate)

    async def _add_candidate(self, ep: WebRtcEndpoint, candidate: dict[str, Any]) -> None:
        args = _candidate_args(candidate)
        if args is not None:
            await ep.add_ice_candidate(*args)

    async def remove(self, participant: str) -> None:
        """A participant left: its recorder is finalized, its endpoints released."""
        entry = self.participants.pop(participant, None)
        released: list[Any] = []
        # Others' subscriptions to the leaver go before any await: a rejoin that publishes
        # while the recorder stops must get fresh ones, not these old ones.
        for other in self.participants.values():
            sub = other.subscriptions.pop(participant, None)
            if sub is not None:
                released.append(sub)
        if entry is not None:
            if entry.publisher is not None:
                released.append(entry.publisher)
            released.extend(entry.subscriptions.values())
            if entry.recorder is not None:
                await self._stop(entry.recorder)
                released.append(entry.recorder)
        for obj in released:
            with contextlib.suppress(KurentoError):
                await obj.release()

    async def _stop(self, recorder: RecorderEndpoint) -> None:
        try:
            await asyncio.wait_for(recorder.stop_and_wait(), STOP_TIMEOUT)
        except (KurentoError, TimeoutError) as exc:
            log.error("! stopAndWait of %s failed: %s", recorder.id, exc, extra=self.log_extra)

    async def close(self, *, server_lost: bool = False) -> None:
        """Finalizes every recording, then releases the pipeline; safe to call twice.

        When the media server is gone (`server_lost`) its objects went with it: nothing is
        asked of it, so teardown does not wait out request timeouts on a dead socket.
        """
        async with self._pipeline_lock:
            if self._closed:
                return
            self._closed = True
        if server_lost:
            if self.pipeline is not None and self.server is not None:
                self.pool.forget_pipeline(self.server, self.pipeline.id)
            self.participants.clear()
            return
        try:
            recorders = [e.recorder for e in self.participants.values() if e.recorder]
            await asyncio.gather(*(self._stop(r) for r in recorders))
        finally:
            if self.pipeline is not None:
                with contextlib.suppress(KurentoError):
                    await self.pipeline.release()
                if self.server is not None:
                    self.pool.forget_pipeline(self.server, self.pipeline.id)
            self.participants.clear()

    @property
    def pipeline_id(self) -> str | None:
        return self.pipeline.id if self.pipeline is not None else None


def _candidate_args(candidate: dict[str, Any]) -> tuple[str, str, int] | None:
    """(candidate, sdpMid, sdpMLineIndex) for addIceCandidate; None for end-of-candidates,
    which KMS ignores."""
    line = str(candidate.get("candidate", ""))
    if not line:
        return None
    mid = candidate.get("sdpMid")
    index = candidate.get("sdpMLineIndex")
    return line, str(mid if mid is not None else "0"), int(index) if isinstance(index, int) else 0
