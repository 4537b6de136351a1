"""What a call makes of its media events: the watchdog's expectations met, the call going
live, media lost and restored mid-call, a recorder failing. A part of `CallSession`, kept
apart because it is the media half of the call's rules; the verdicts themselves are pure
(`signaling.liveness`, `signaling.watchdog`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from signaling.call import Call, CallState, FailureReason
from signaling.events import (
    CallEvent,
    CandidatesDropped,
    FailedPart,
    FlowChanged,
    IcePairSelected,
    IceStateChanged,
    MediaEvent,
    MediaFailed,
    RecordingStarted,
    timeline_fields,
)
from signaling.liveness import FlowKey, ready_for_live
from signaling.participant import ParticipantState
from signaling.protocol import encode
from signaling.watchdog import Expectation, Expired, MediaWatchdog, WatchdogTimer

if TYPE_CHECKING:
    from signaling.call_session import CallServices
    from signaling.media import CallMedia
    from signaling.participant_session import Connection, ParticipantSession

__all__ = ["MediaVerdicts"]

log = logging.getLogger("signaling.call_session")


class MediaVerdicts:
    call: Call
    media: CallMedia
    services: CallServices
    watchdog: MediaWatchdog
    timer: WatchdogTimer
    members: dict[str, ParticipantSession]
    closing: bool
    _loss_timer: asyncio.TimerHandle | None

    if TYPE_CHECKING:
        def member(self, pid: str) -> ParticipantSession: ...
        def connected(self) -> dict[str, Connection]: ...
        def send(self, pid: str, text: str) -> None: ...
        def broadcast(self, text: str, *, but: str | None = None) -> None: ...

    def on_media(self, event: MediaEvent) -> None:
        name, fields = timeline_fields(event)
        self.call.timeline.add(name, **fields)
        match event:
            case FlowChanged():
                self._on_flow(event)
            case RecordingStarted():
                self._on_recording(event.participant)
            case MediaFailed():
                self._on_failure(event)
            case CandidatesDropped():
                log.info("= dropped %d %s candidates of %s: %s", len(event.reasons),
                         event.direction, event.participant,
                         ",".join(sorted(set(event.reasons))), extra={"call_id": self.call.id})
            case IceStateChanged() | IcePairSelected():
                pass

    def _satisfy(self, expectation: Expectation) -> None:
        if self.closing:
            return  # teardown cancelled the watchdog; re-arming it would outlive the call
        if self.watchdog.satisfy(expectation):
            self.timer.rearm()
            self.call.timeline.add("media", participant=expectation.participant,
                                   proven=expectation.direction, kind=expectation.kind,
                                   source=expectation.source)
        self._check_live()

    def _on_flow(self, event: FlowChanged) -> None:
        if self.closing or event.owner not in self.call.participants:
            return  # events of a pipeline being torn down: on the timeline, nothing more
        key: FlowKey = (event.owner, event.target, event.kind)
        loss = self.member(event.owner).loss
        if not event.flowing:
            if self.call.state is CallState.LIVE:
                loss.stop(key, self.timer.now())
                self._rearm_loss()
            return
        if loss.resume(key):
            self._loss_changed(key, "mediaRestored", CallEvent.MEDIA_RESTORED)
        self._rearm_loss()
        if event.target == "publish" and event.direction == "out":
            self._satisfy(Expectation(event.owner, "from-browser", event.kind))
            self.send(event.owner, encode("mediaFlowing", direction="sending",
                                          kind=event.kind))
        elif event.target != "publish" and event.direction == "in":
            self._satisfy(Expectation(event.owner, "to-browser", event.kind, event.target))

    def _rearm_loss(self) -> None:
        if self._loss_timer is not None:
            self._loss_timer.cancel()
            self._loss_timer = None
        deadlines = [d for m in self.members.values()
                     if (d := m.loss.next_deadline()) is not None]
        if deadlines and not self.closing:
            self._loss_timer = asyncio.get_running_loop().call_at(min(deadlines),
                                                                  self._report_losses)

    def _report_losses(self) -> None:
        self._loss_timer = None
        if self.closing:
            return
        now = self.timer.now()
        for m in list(self.members.values()):
            for key in m.loss.due(now):
                self._loss_changed(key, "mediaInterrupted", CallEvent.MEDIA_INTERRUPTED)
        self._rearm_loss()

    def _loss_changed(self, key: FlowKey, message: str, event: CallEvent) -> None:
        """Media that stopped (or came back) mid-call: told to everyone, the call goes on."""
        owner, target, kind = key
        # A publisher's endpoint stops receiving from its browser; a subscriber's endpoint
        # stops sending to its browser: either way name whose media and who misses it.
        source = owner if target == "publish" else target
        fields: dict[str, Any] = {"participant": source, "kind": kind,
                                  **({} if target == "publish" else {"viewer": owner})}
        self.call.timeline.add(message, **fields)
        log.warning("! %s %s", message, fields, extra={"call_id": self.call.id})
        self.broadcast(encode(message, **fields))
        self.services.emit(event, self.call, fields)

    def _on_recording(self, pid: str) -> None:
        if self.closing or pid not in self.call.participants:
            return
        self.member(pid).recording = True
        self.send(pid, encode("recording", state="on"))
        self._satisfy(Expectation(pid, "recording", "file"))

    def _on_failure(self, event: MediaFailed) -> None:
        if event.part is FailedPart.RECORDER:
            # The media server's description names the file on the server: it stays on
            # the timeline and in the log, and the participants read only what happened.
            log.error("! %s's recorder: %s", event.participant, event.description,
                      extra={"call_id": self.call.id})
            self.services.end_soon(
                self.call.id, FailureReason.RECORDING_FAILED,
                f"the recording of {event.participant} could not be written")

    def _check_live(self) -> None:
        call = self.call
        if call.state is not CallState.CONNECTING:
            return
        connected = self.connected()
        publishers = [p for p in call.participants.values() if p.published and p.id in connected]
        if not ready_for_live(
                publishers=[p.id for p in publishers],
                recording=[pid for pid, m in self.members.items() if m.recording],
                watchdog_pending=self.watchdog.pending,
                subscribed=[(viewer, source) for viewer, e in self.media.participants.items()
                            for source in e.subscriptions],
                reported=[(pid, source) for pid, m in self.members.items()
                          for source in m.reported]):
            return
        for p in publishers:
            if p.state is ParticipantState.CONNECTING:
                p.transition(ParticipantState.CONNECTED)
        call.transition(CallState.LIVE)
        self.broadcast(encode("callLive", recording=True))
        self.services.emit(CallEvent.LIVE, call, {})

    def _ice_detail(self, expectation: Expectation) -> str:
        # Whose endpoint's ICE explains it: the publisher's for its own upload and recording,
        # the viewer's receiving endpoint for media towards the browser.
        key = (expectation.participant, expectation.source or "publish")
        state = self.media.ice_states.get(key, "no ICE activity")
        if state not in ("CONNECTED", "READY") and self.media.filter.browser.ice_failed(key):
            # Failed, whatever Kurento still says: with nothing to check it stays GATHERING,
            # and the embedded server never learns that a trickling browser gave up.
            state = "FAILED"
        return f"ICE {state}"

    def _on_watchdog(self, expired: Expired) -> None:
        reason = FailureReason.RECORDING_FAILED if expired.expectation.direction == "recording" \
            else FailureReason.NO_MEDIA
        log.warning("! watchdog: %s", expired.detail, extra={"call_id": self.call.id})
        self.services.end_soon(self.call.id, reason, expired.detail)

