"""Kurento events as frozen dataclasses, parsed from `onEvent` notifications (KMS 7 names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kurento_ctl.jsonrpc import Notification

__all__ = [
    "ConnectionStateChanged",
    "EndOfStream",
    "Error",
    "IceCandidateFound",
    "IceComponentStateChanged",
    "IceGatheringDone",
    "KurentoEvent",
    "MediaFlowInStateChanged",
    "MediaFlowOutStateChanged",
    "MediaSessionStarted",
    "MediaStateChanged",
    "NewCandidatePairSelected",
    "ObjectCreated",
    "ObjectDestroyed",
    "Paused",
    "Recording",
    "Stopped",
    "parse_event",
]


@dataclass(frozen=True)
class KurentoEvent:
    object_id: str
    source: str
    timestamp_ms: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> KurentoEvent:
        return cls(**_base(object_id, data))


def _base(object_id: str, data: dict[str, Any]) -> dict[str, Any]:
    try:
        ts = int(data.get("timestampMillis", 0))
    except (TypeError, ValueError):
        ts = 0
    return {"object_id": object_id, "source": str(data.get("source", object_id)),
            "timestamp_ms": ts, "raw": data}


@dataclass(frozen=True)
class IceCandidateFound(KurentoEvent):
    candidate: str = ""
    sdp_mid: str = ""
    sdp_mline_index: int = 0

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> IceCandidateFound:
        c = data.get("candidate") or {}
        return cls(**_base(object_id, data), candidate=str(c.get("candidate", "")),
                   sdp_mid=str(c.get("sdpMid", "")),
                   sdp_mline_index=int(c.get("sdpMLineIndex", 0)))


@dataclass(frozen=True)
class IceGatheringDone(KurentoEvent):
    pass


@dataclass(frozen=True)
class IceComponentStateChanged(KurentoEvent):
    state: str = ""
    stream_id: int = 0
    component_id: int = 0

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> IceComponentStateChanged:
        return cls(**_base(object_id, data), state=str(data.get("state", "")),
                   stream_id=int(data.get("streamId", 0)),
                   component_id=int(data.get("componentId", 0)))


@dataclass(frozen=True)
class NewCandidatePairSelected(KurentoEvent):
    local_candidate: str = ""
    remote_candidate: str = ""

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> NewCandidatePairSelected:
        pair = data.get("candidatePair") or {}
        return cls(**_base(object_id, data), local_candidate=str(pair.get("localCandidate", "")),
                   remote_candidate=str(pair.get("remoteCandidate", "")))


@dataclass(frozen=True)
class _MediaFlow(KurentoEvent):
    state: str = ""
    media_type: str = ""
    pad_name: str = "default"

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> _MediaFlow:
        return cls(**_base(object_id, data), state=str(data.get("state", "")),
                   media_type=str(data.get("mediaType", "")),
                   pad_name=str(data.get("padName", "default")))

    @property
    def flowing(self) -> bool:
        return self.state == "FLOWING"


@dataclass(frozen=True)
class MediaFlowInStateChanged(_MediaFlow):
    """Media reaching this element from the pipeline (on a WebRtcEndpoint: to the browser)."""


@dataclass(frozen=True)
class MediaFlowOutStateChanged(_MediaFlow):
    """Media leaving this element into the pipeline (on a WebRtcEndpoint: from the browser)."""


@dataclass(frozen=True)
class _StateChange(KurentoEvent):
    old_state: str = ""
    new_state: str = ""

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> _StateChange:
        return cls(**_base(object_id, data), old_state=str(data.get("oldState", "")),
                   new_state=str(data.get("newState", "")))


@dataclass(frozen=True)
class MediaStateChanged(_StateChange):
    pass


@dataclass(frozen=True)
class ConnectionStateChanged(_StateChange):
    pass


@dataclass(frozen=True)
class MediaSessionStarted(KurentoEvent):
    pass


@dataclass(frozen=True)
class Error(KurentoEvent):
    description: str = ""
    error_code: int = 0
    error_type: str = ""

    @classmethod
    def from_data(cls, object_id: str, data: dict[str, Any]) -> Error:
        return cls(**_base(object_id, data), description=str(data.get("description", "")),
                   error_code=int(data.get("errorCode", 0)),
                   error_type=str(data.get("type", "")))


@dataclass(frozen=True)
class Recording(KurentoEvent):
    pass


@dataclass(frozen=True)
class Paused(KurentoEvent):
    pass


@dataclass(frozen=True)
class Stopped(KurentoEvent):
    pass


@dataclass(frozen=True)
class EndOfStream(KurentoEvent):
    pass


@dataclass(frozen=True)
class ObjectCreated(KurentoEvent):
    pass


@dataclass(frozen=True)
class ObjectDestroyed(KurentoEvent):
    pass


_TYPES: dict[str, type[KurentoEvent]] = {
    cls.__name__: cls for cls in (
        IceCandidateFound, IceGatheringDone, IceComponentStateChanged, NewCandidatePairSelected,
        MediaFlowInStateChanged, MediaFlowOutStateChanged, MediaStateChanged,
        ConnectionStateChanged, MediaSessionStarted, Error, Recording, Paused, Stopped,
        EndOfStream, ObjectCreated, ObjectDestroyed,
    )
}


def parse_event(n: Notification) -> KurentoEvent:
    """The typed event; unknown event types come back as a plain KurentoEvent."""
    cls = _TYPES.get(n.type, KurentoEvent)
    return cls.from_data(n.object_id, n.data)
