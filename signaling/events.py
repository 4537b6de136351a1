"""Typed events: what the call tells the service (hooks, webhooks, timeline names) and what
the media layer tells the call. Passed as objects; nothing is flattened into strings and
parsed again."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["CallEvent", "CandidatesDropped", "FailedPart", "FlowChanged", "IcePairSelected",
           "IceStateChanged", "MediaEvent", "MediaFailed", "RecordingStarted"]


class CallEvent(enum.StrEnum):
    """What a call reports to its hooks: the history, the webhooks, the recordings worker.
    The MIS subscribes to these names (`webhooks.endpoints`)."""

    CREATED = "call.created"
    LIVE = "call.live"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    FAILED = "call.failed"
    ENDED = "call.ended"
    MEDIA_INTERRUPTED = "call.media_interrupted"
    MEDIA_RESTORED = "call.media_restored"
    #: A process took the call over after the one running it died; its media never stopped.
    RESUMED = "call.resumed"

    @property
    def over(self) -> bool:
        """The call's last event: its recordings can be finalized."""
        return self in (CallEvent.ENDED, CallEvent.FAILED)


@dataclass(frozen=True, kw_only=True)
class FlowChanged:
    """An endpoint's media flow started or stopped. `target` is "publish" for a
    participant's own upload endpoint, else the source it receives; `direction` is
    Kurento's: "out" on a publishing endpoint is media *from* the browser."""

    owner: str
    target: str
    direction: str
    kind: str
    flowing: bool


@dataclass(frozen=True, kw_only=True)
class RecordingStarted:
    participant: str


class FailedPart(enum.StrEnum):
    RECORDER = "recorder"
    #: An `Error` KMS raises on a recorder for what is only a warning: the call goes on.
    RECORDER_WARNING = "recorder-warning"
    ENDPOINT = "endpoint"


@dataclass(frozen=True, kw_only=True)
class MediaFailed:
    """A media element's error: a recorder's fails the call (it cannot be recorded)."""

    participant: str
    part: FailedPart
    description: str


@dataclass(frozen=True, kw_only=True)
class IceStateChanged:
    participant: str
    target: str
    state: str


@dataclass(frozen=True, kw_only=True)
class IcePairSelected:
    participant: str
    target: str
    #: The browser's end of the selected pair, `<type>/<transport>` ("relay/udp").
    remote: str


@dataclass(frozen=True, kw_only=True)
class CandidatesDropped:
    participant: str
    direction: str
    reasons: tuple[str, ...]


MediaEvent = (FlowChanged | RecordingStarted | MediaFailed | IceStateChanged | IcePairSelected
              | CandidatesDropped)


def timeline_fields(event: MediaEvent) -> tuple[str, dict[str, Any]]:
    """The timeline entry a media event leaves: its name and fields."""
    match event:
        case FlowChanged():
            return "flow", {"participant": event.owner, "target": event.target,
                            "direction": event.direction, "kind": event.kind,
                            "flowing": event.flowing}
        case RecordingStarted():
            return "recording", {"participant": event.participant}
        case MediaFailed():
            error = event.description if event.part is FailedPart.ENDPOINT \
                else f"{event.part.value}: {event.description}"
            return "media-error", {"participant": event.participant, "error": error}
        case IceStateChanged():
            return "ice", {"participant": event.participant, "target": event.target,
                           "state": event.state}
        case IcePairSelected():
            return "ice-pair", {"participant": event.participant, "target": event.target,
                                "remote": event.remote}
        case CandidatesDropped():
            return "candidates-dropped", {"participant": event.participant,
                                          "direction": event.direction,
                                          "reasons": list(event.reasons)}
