"""`CallMedia`: one call's Kurento pipeline, endpoints and recorders.

Topology: each participant publishes through one WebRtcEndpoint whose stream is also
connected to its own RecorderEndpoint; each viewer receives each other participant through
a WebRtcEndpoint connected from that participant's publisher. `close()` ends every recorder
with `stopAndWait`, one after another (KMS serves a socket in order anyway), before the
pipeline is released, whatever happened before.

An offer is answered in ONE media-server round trip, a single Kurento `transaction`,
built and committed by `signaling.media_negotiation` (a part of this class).

What KMS's own source says we must not assume (KMS-SOURCE-NOTES.md):
- a recorder `Error` is not always a failed recording (see `signaling.media_negotiation`);
- a transaction whose reply never came may have run entirely: the objects it created are
  found again by their tags (kurento_ctl.sweep);
- after a resumed session the events of the gap are lost: state is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from kurento_ctl.errors import KurentoError
from kurento_ctl.events import (
    Error,
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
from signaling.candidates import CandidateBuffer, CandidateFilter
from signaling.errors import MediaError
from signaling.media_negotiation import MediaNegotiation
from signaling.media_resume import refresh, release_unknown
from signaling.media_types import (
    FAILING_RECORDER_ERRORS,
    STOP_TIMEOUT,
    Endpoints,
    MediaListener,
    Negotiation,
    candidate_args,
    candidate_kind,
)

__all__ = ["FAILING_RECORDER_ERRORS", "CallMedia", "MediaListener", "candidate_kind"]

log = logging.getLogger(__name__)


def private_folders(folder: Path) -> None:
    """`folder` and its missing parents made 0700 whatever the umask (recordings are medical
    data); folders that already exist, such as a configured recordings root, are left as
    they are."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            continue  # another call made it at the same moment, private too
        os.chmod(level, 0o700)  # mkdir's mode is narrowed by the umask, never widened


class CallMedia(MediaNegotiation):
    def __init__(self, call_id: str, pool: KurentoPool, recordings_dir: Path,
                 listener: MediaListener, candidate_filter: CandidateFilter, *,
                 node_id: str | None = None) -> None:
        self.call_id = call_id
        self.pool = pool
        self.node_id = node_id or pool.node_id
        self.recordings_dir = recordings_dir
        self.listener = listener
        self.filter = candidate_filter
        self.server: PooledServer | None = None
        self.pipeline: MediaPipeline | None = None
        self.participants: dict[str, Endpoints] = {}
        self.buffer = CandidateBuffer()
        self.ice_states: dict[tuple[str, str], str] = {}
        self._flows: dict[tuple[str, str, str], bool] = {}
        self._recording: set[str] = set()
        self._pipeline_lock = asyncio.Lock()
        self._stop_lock = asyncio.Lock()
        self._closed = False
        #: A transaction's reply never came: it may have made objects we hold no id of.
        self.uncertain = False
        self._unwatch_resume: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[asyncio.Future[str]] = set()
        self.recordings: list[Path] = []
        self._segments: dict[str, int] = {}

    @property
    def log_extra(self) -> dict[str, str]:
        return {"call_id": self.call_id}

    def _recording_path(self, participant: str) -> Path:
        """`<id>.webm`, then `<id>.part2.webm`… when the participant rejoined and published
        again, so a rejoin never overwrites what was already recorded."""
        earlier = self._segments.get(participant, 0)
        self._segments[participant] = earlier + 1
        name = f"{participant}.webm" if not earlier else f"{participant}.part{earlier + 1}.webm"
        return self.recordings_dir / name

    # ---------------------------------------------------------------- offers

    async def publish(self, participant: str, offer: str, kinds: frozenset[str], *,
                      turn_url: str | None = None) -> str:
        """Answers a publisher's offer; its recorder is recording (or waiting for media).

        `turn_url` (Kurento's `user:password@<IPv4>:<port>?transport=…`) is the
        participant's own TURN lease, so the endpoint can relay where the browser cannot
        reach it directly."""
        entry = self.participants.setdefault(participant, Endpoints())
        if entry.publisher is not None or "publish" in entry.negotiating:
            raise MediaError("already published; leave and join again to renegotiate",
                             code="sdp.invalid")
        entry.negotiating.add("publish")
        try:
            return await self._shielded(self._publish(entry, participant, offer, kinds,
                                                      turn_url))
        finally:
            entry.negotiating.discard("publish")

    async def _publish(self, entry: Endpoints, participant: str, offer: str,
                       kinds: frozenset[str], turn_url: str | None) -> str:
        profile: MediaProfile = "WEBM" if kinds == {"audio", "video"} else (
            "WEBM_AUDIO_ONLY" if kinds == {"audio"} else "WEBM_VIDEO_ONLY")
        path = self._recording_path(participant)
        private_folders(path.parent)
        media_type: MediaType | None = None if len(kinds) != 1 else (
            "AUDIO" if "audio" in kinds else "VIDEO")

        def build(neg: Negotiation) -> None:
            tx, ep, recorder = neg.tx, neg.ep, neg.recorder
            assert recorder is not None
            if turn_url:
                tx.invoke(ep, "setTurnUrl", turnUrl=turn_url)
            tx.subscribe(recorder, Recording, lambda _: self._recorded(participant))
            tx.subscribe(recorder, Error, lambda e: self._recorder_error(participant, e))
            tx.connect(ep, recorder, media_type)
            tx.record(recorder)
            for name, viewer in self.participants.items():
                sub = viewer.subscriptions.get(participant)
                if sub is not None:
                    tx.connect(ep, sub)
                    neg.connected.add(name)

        neg, answer = await self._negotiation(participant, "publish", offer, build,
                                              (path, profile))
        assert neg.recorder is not None
        if self._closed or self.participants.get(participant) is not entry:
            await self._stop(neg.recorder)
            await self._release_known(neg)
            raise MediaError("left while publishing", code="call.ended")
        entry.publisher, entry.recorder, entry.recorder_path = neg.ep, neg.recorder, path
        entry.kinds = kinds
        self.recordings.append(path)
        # Viewers whose subscription committed while ours was in flight.
        for name, viewer in self.participants.items():
            sub = viewer.subscriptions.get(participant)
            if sub is not None and name not in neg.connected:
                await neg.ep.connect(sub)
        # After the answer, not before it: the browser waits for the answer, not for these.
        self._background(self._flush(participant, "publish", neg.ep))
        return answer

    async def _shielded(self, coro: Coroutine[Any, Any, str]) -> str:
        """Runs a negotiation to its end even if the caller is cancelled (its socket went),
        and lets `close()` wait for it: what it made must be stopped and released too."""
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def subscribe(self, viewer: str, source: str, offer: str, *,
                        turn_url: str | None = None) -> str:
        entry = self.participants.setdefault(viewer, Endpoints())
        if source in entry.subscriptions or source in entry.negotiating:
            raise MediaError("already subscribed to that participant", code="sdp.invalid")
        entry.negotiating.add(source)
        try:
            return await self._shielded(self._subscribe(entry, viewer, source, offer,
                                                        turn_url))
        finally:
            entry.negotiating.discard(source)

    async def _subscribe(self, entry: Endpoints, viewer: str, source: str, offer: str,
                         turn_url: str | None) -> str:
        def build(neg: Negotiation) -> None:
            if turn_url:
                neg.tx.invoke(neg.ep, "setTurnUrl", turnUrl=turn_url)
            publisher = self.participants.get(source, Endpoints()).publisher
            if publisher is not None:
                neg.tx.connect(publisher, neg.ep)
                neg.connected.add(source)

        neg, answer = await self._negotiation(viewer, source, offer, build)
        if self._closed or self.participants.get(viewer) is not entry:
            await self._release_known(neg)
            raise MediaError("left while subscribing", code="call.ended")
        entry.subscriptions[source] = neg.ep
        publisher = self.participants.get(source, Endpoints()).publisher
        if publisher is not None and source not in neg.connected:
            await publisher.connect(neg.ep)  # it committed while ours was in flight
        self._background(self._flush(viewer, source, neg.ep))
        return answer

    async def _flush(self, owner: str, target: str, ep: WebRtcEndpoint) -> None:
        """Candidates that arrived while the transaction was in flight, or that KMS did not
        run after a refused one, go to the endpoint now."""
        for candidate in self.buffer.take(f"{owner}/{target}"):
            try:
                await self._add_candidate(ep, candidate)
            except KurentoError as exc:
                log.warning("! candidate refused by the media server: %s", exc,
                            extra=self.log_extra)

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
        if ep is None and not self.buffer.add(f"{owner}/{target}", candidate):
            raise MediaError("too many early candidates", code="candidate.invalid")
        # Counted once held: the buffer's cap bounds what invented targets can add.
        self.filter.browser.trickled((owner, target), verdict.line)
        if ep is not None:
            await self._add_candidate(ep, candidate)

    async def _add_candidate(self, ep: WebRtcEndpoint, candidate: dict[str, Any]) -> None:
        args = candidate_args(candidate)
        if args is not None:
            await ep.add_ice_candidate(*args)

    # ---------------------------------------------------------------- takeover

    def adopted(self, server: PooledServer, pipeline: MediaPipeline,
                entries: dict[str, Endpoints]) -> None:
        """The objects a dead process made (`media_adopt.adopt`) are this call's now."""
        self.pool.adopt(server, pipeline)
        self.server, self.pipeline = server, pipeline
        self.participants = entries
        self._unwatch_resume = pipeline.client.on_resumed(self._resumed)
        paths = [e.recorder_path for e in entries.values() if e.recorder_path is not None]
        if paths:
            # The folder is named after the day the call began, not today.
            self.recordings_dir = paths[0].parent
        # Every file of the call, earlier segments included, and the next segment's number.
        self.recordings = sorted(self.recordings_dir.glob("*.webm"))
        for path in self.recordings:
            named = re.fullmatch(r"(.+?)(?:\.part(\d+))?", path.stem)
            if named is not None:
                owner, segment = named[1], int(named[2] or 1)
                self._segments[owner] = max(self._segments.get(owner, 0), segment)

    # ---------------------------------------------------------------- resumed sessions

    def _resumed(self, _session_id: str) -> None:
        self._background(refresh(self))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- teardown

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
        self._recording.discard(participant)
        self.filter.browser.forget(participant)
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
        """One stopAndWait of this call at a time, whoever asks (two leaving at once, a
        close): KMS serves the socket in order, so a burst only blocks everything else."""
        try:
            async with self._stop_lock:
                await asyncio.wait_for(recorder.stop_and_wait(), STOP_TIMEOUT)
        except (KurentoError, TimeoutError) as exc:
            log.error("! stopAndWait of %s failed: %s", recorder.id, exc, extra=self.log_extra)

    async def close(self, *, server_lost: bool = False) -> None:
        """Finalizes every recording, then releases the pipeline; safe to call twice.

        When the media server is reported lost (`server_lost`) nothing is asked of it here,
        so teardown does not wait out request timeouts on a dead socket; the pool releases
        the pipeline if the same server process answers again."""
        async with self._pipeline_lock:
            if self._closed:
                return
            self._closed = True
        if self._unwatch_resume is not None:
            self._unwatch_resume()
        for task in list(self._tasks):
            task.cancel()
        if server_lost:
            for future in self._inflight:
                future.add_done_callback(_retrieve)
            if self.pipeline is not None and self.server is not None:
                self.pool.forget_pipeline(self.server, self.pipeline.id)
            self.participants.clear()
            return
        # A negotiation in flight sees the call closed when its reply comes, and stops and
        # releases what it made itself; only then is the pipeline released under it.
        await asyncio.gather(*self._inflight, return_exceptions=True)
        try:
            # One at a time: KMS serves the socket in order anyway, and a burst of 4 s
            # stopAndWaits would only sit in front of every other request on it.
            for entry in list(self.participants.values()):
                if entry.recorder is not None:
                    await self._stop(entry.recorder)
        finally:
            if self.pipeline is not None:
                with contextlib.suppress(KurentoError):
                    await self.pipeline.release()
                if self.server is not None:
                    self.pool.forget_pipeline(self.server, self.pipeline.id)
            self.participants.clear()
            if self.uncertain:
                await release_unknown(self)

    @property
    def pipeline_id(self) -> str | None:
        return self.pipeline.id if self.pipeline is not None else None


def _retrieve(future: asyncio.Future[str]) -> None:
    """Marks a negotiation's outcome as seen: nobody waits for it any more."""
    if not future.cancelled():
        future.exception()
