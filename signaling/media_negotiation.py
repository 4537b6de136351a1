"""How `CallMedia` answers an offer: ONE media-server round trip, a single Kurento
`transaction`. A part of `CallMedia`, kept apart because it is the wire half of it (what
one offer asks of the media server, and the events it subscribes); the call's media
lifecycle (offers in order, leaving, takeover, close) stays in `signaling.media`.

The transaction creates the endpoint (and the publisher's recorder; and the pipeline, for
the call's first endpoint), tags them with the call and this node, subscribes every event
we rely on, connects, records, runs `processOffer`, `gatherCandidates`, and the candidates
buffered meanwhile. KMS resolves `newref:` ids in `subscribe` ops; the client keeps events
for ids it does not know yet until the reply names them. Ops run in order, so the
subscriptions come before anything that could raise their events; KMS does not replay
events.

A recorder `Error` is not always a failed recording: KMS forwards GStreamer warnings as
`Error` too. Only `RESOURCE_ERROR_OPEN/WRITE/NO_SPACE_LEFT` fail it; the rest is noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kurento_ctl.errors import KurentoError, OperationNotRun, RpcError, SdpError
from kurento_ctl.events import (
    Error,
    IceCandidateFound,
    IceComponentStateChanged,
    KurentoEvent,
    MediaFlowInStateChanged,
    MediaFlowOutStateChanged,
    NewCandidatePairSelected,
)
from kurento_ctl.objects import MediaPipeline, MediaProfile, WebRtcEndpoint
from kurento_ctl.pool import KurentoPool, PooledServer
from kurento_ctl.sweep import TAG_CALL, TAG_ENDPOINT, TAG_NODE
from kurento_ctl.transaction import Transaction
from signaling.candidates import CandidateBuffer, CandidateFilter
from signaling.errors import MediaError
from signaling.events import FailedPart
from signaling.media_types import (
    FAILING_RECORDER_ERRORS,
    UNCERTAIN,
    MediaListener,
    Negotiation,
    candidate_args,
    candidate_kind,
    error_of,
)

__all__ = ["MediaNegotiation"]

# The call's media logs under one name, whichever half of it speaks.
log = logging.getLogger("signaling.media")


class MediaNegotiation:
    call_id: str
    pool: KurentoPool
    node_id: str
    listener: MediaListener
    filter: CandidateFilter
    server: PooledServer | None
    pipeline: MediaPipeline | None
    buffer: CandidateBuffer
    ice_states: dict[tuple[str, str], str]
    uncertain: bool
    _flows: dict[tuple[str, str, str], bool]
    _recording: set[str]
    _pipeline_lock: asyncio.Lock
    _closed: bool
    _unwatch_resume: Callable[[], None] | None

    if TYPE_CHECKING:
        @property
        def log_extra(self) -> dict[str, str]: ...
        def _resumed(self, _session_id: str) -> None: ...

    async def _negotiation(self, owner: str, target: str, offer: str,
                           build: Callable[[Negotiation], None],
                           recorder: tuple[Path, MediaProfile] | None = None) -> tuple[
                               Negotiation, str]:
        """Builds and commits one offer's transaction; returns it and the SDP answer.

        Shielded by the callers: a caller cancelled mid-way (its socket went) must not
        orphan what the server already made; a new pipeline is kept as the call's, and
        `close()` releases it."""
        async with self._pipeline_lock:
            if self._closed:
                raise MediaError("the call is over", code="call.ended")
            if self.pipeline is None:
                server, client = self.pool.placement()
                tx = Transaction(client)
                pipeline = tx.create_pipeline()
                tx.add_tag(pipeline, TAG_CALL, self.call_id)
                tx.add_tag(pipeline, TAG_NODE, self.node_id)
                neg = self._build(tx, pipeline, True, owner, target, offer, build, recorder)
                await self._commit(neg)
                self.pool.adopt(server, pipeline)
                self.server, self.pipeline = server, pipeline
                self._unwatch_resume = client.on_resumed(self._resumed)
                log.info("= pipeline %s on %s", pipeline.id, server.url, extra=self.log_extra)
                return neg, self._answer(owner, neg.answer.value if neg.answer else "")
            pipeline = self.pipeline
        tx = Transaction(pipeline.client)
        neg = self._build(tx, pipeline, False, owner, target, offer, build, recorder)
        await self._commit(neg)
        return neg, self._answer(owner, neg.answer.value if neg.answer else "")

    def _build(self, tx: Transaction, pipeline: MediaPipeline, new_pipeline: bool, owner: str,
               target: str, offer: str, build: Callable[[Negotiation], None],
               recorder: tuple[Path, MediaProfile] | None) -> Negotiation:
        ep = tx.create_webrtc_endpoint(pipeline)
        tx.add_tag(ep, TAG_CALL, self.call_id)
        tx.add_tag(ep, TAG_ENDPOINT, f"{owner}/{target}")
        neg = Negotiation(owner, target, tx, pipeline, new_pipeline, ep)
        if recorder is not None:
            path, profile = recorder
            neg.recorder = tx.create_recorder_endpoint(pipeline, path.as_uri(),
                                                       media_profile=profile)
            tx.add_tag(neg.recorder, TAG_CALL, self.call_id)
            tx.add_tag(neg.recorder, TAG_ENDPOINT, f"{owner}/recorder")
        self._watch(tx, ep, owner, target)
        build(neg)
        neg.answer = tx.process_offer(ep, self._offer(owner, target, offer))
        neg.gathering = tx.gather_candidates(ep)
        for candidate in self.buffer.take(f"{owner}/{target}"):
            args = candidate_args(candidate)
            if args is not None:
                neg.candidates.append((tx.add_ice_candidate(ep, *args), candidate))
        return neg

    async def _commit(self, neg: Negotiation) -> None:
        """Commits; an op that failed releases what the transaction made. A refused
        buffered candidate alone does not fail the offer: the candidates after it, which
        KMS did not run, are sent again on their own."""
        try:
            await neg.tx.commit()
        except UNCERTAIN:
            self.uncertain = True
            log.error("! a transaction of %s/%s got no reply: it may have run; its objects "
                      "are found again by their tags", neg.owner, neg.target,
                      extra=self.log_extra)
            await self._release_known(neg)
            raise
        except SdpError as exc:
            await self._release_known(neg)
            raise MediaError(f"the media server refused the offer: {exc.message}",
                             code="sdp.invalid") from None
        except RpcError as exc:
            if neg.gathering is None or not neg.gathering.done:
                await self._release_known(neg)
                raise
            log.warning("! early candidate refused by the media server: %s", exc.message,
                        extra=self.log_extra)
            for pending, candidate in neg.candidates:
                if isinstance(error_of(pending), OperationNotRun):
                    self.buffer.add(f"{neg.owner}/{neg.target}", candidate)

    @staticmethod
    async def _release_known(neg: Negotiation) -> None:
        for obj in neg.created:
            if not obj.id.startswith("newref:"):
                with contextlib.suppress(KurentoError):
                    await obj.release()

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
            self._flow(ep, owner, target, direction, e.media_type.lower(), e.flowing)

        def on_ice(e: KurentoEvent) -> None:
            assert isinstance(e, IceComponentStateChanged)
            self._ice(owner, target, e.state)

        def on_pair(e: KurentoEvent) -> None:
            assert isinstance(e, NewCandidatePairSelected)
            self.listener.pair(owner, target, candidate_kind(e.remote_candidate))

        def on_error(e: KurentoEvent) -> None:
            assert isinstance(e, Error)
            self.listener.failure(owner, FailedPart.ENDPOINT, f"{e.error_type}: {e.description}")

        tx.subscribe(ep, IceCandidateFound, on_candidate)
        tx.subscribe(ep, MediaFlowInStateChanged, on_flow)
        tx.subscribe(ep, MediaFlowOutStateChanged, on_flow)
        tx.subscribe(ep, IceComponentStateChanged, on_ice)
        tx.subscribe(ep, NewCandidatePairSelected, on_pair)
        tx.subscribe(ep, Error, on_error)

    def _flow(self, ep: WebRtcEndpoint, owner: str, target: str, direction: str, kind: str,
              on: bool, *, read: bool = False) -> None:
        # Per endpoint, not per participant: a rejoin's new endpoint starts afresh.
        key = (ep.id, direction, kind)
        if read and key not in self._flows and not on:
            # Re-read after a resume: "not flowing" of something that never flowed (an
            # audio-only publisher's video) is no news.
            self._flows[key] = on
            return
        if self._flows.get(key) is not on:
            self._flows[key] = on
            self.listener.flow(owner, target, direction, kind, on)

    def _ice(self, owner: str, target: str, state: str) -> None:
        self.ice_states[(owner, target)] = state
        self.listener.ice_state(owner, target, state)

    def _recorded(self, participant: str) -> None:
        if participant not in self._recording:
            self._recording.add(participant)
            self.listener.recording(participant)

    def _offer(self, owner: str, target: str, sdp: str) -> str:
        filtered, reasons = self.filter.filter_sdp(sdp)
        self.filter.browser.offered((owner, target), filtered)
        if reasons:
            self.listener.dropped(owner, "from-browser", reasons)
        return filtered

    def _answer(self, owner: str, sdp: str) -> str:
        filtered, reasons = self.filter.filter_sdp(sdp)
        if reasons:
            self.listener.dropped(owner, "to-browser", reasons)
        return filtered

    def _recorder_error(self, participant: str, e: KurentoEvent) -> None:
        assert isinstance(e, Error)
        if e.error_type in FAILING_RECORDER_ERRORS:
            self.listener.failure(participant, FailedPart.RECORDER,
                                  f"{e.error_type}: {e.description}")
        else:
            log.warning("! %s's recorder reported %s (code %s), not a failure: %s",
                        participant, e.error_type, e.raw.get("errorCode"), e.description,
                        extra=self.log_extra)
            self.listener.failure(participant, FailedPart.RECORDER_WARNING,
                                  f"{e.error_type}: {e.description}")
