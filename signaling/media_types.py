"""The records and helpers `CallMedia` (signaling.media) is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioice import Candidate

from kurento_ctl.errors import ConnectionLost, RequestTimeout
from kurento_ctl.objects import MediaObject, MediaPipeline, RecorderEndpoint, WebRtcEndpoint
from kurento_ctl.transaction import Pending, Transaction
from signaling.events import FailedPart

__all__ = ["FAILING_RECORDER_ERRORS", "STOP_TIMEOUT", "UNCERTAIN", "Endpoints",
           "MediaListener", "Negotiation", "candidate_args", "candidate_kind", "error_of"]

STOP_TIMEOUT = 10.0  # KMS's stopAndWait caps itself at 4 s; ours covers the RPC on top
#: The recorder `Error` types that mean the file is not being written. KMS raises `Error`
#: for GStreamer warnings too (UNEXPECTED_ELEMENT_ERROR, STREAM_ERROR_*): those are noted.
FAILING_RECORDER_ERRORS = frozenset({"RESOURCE_ERROR_OPEN", "RESOURCE_ERROR_WRITE",
                                     "RESOURCE_ERROR_NO_SPACE_LEFT"})
#: Outcomes of a transaction that say nothing about whether KMS ran it.
UNCERTAIN = (RequestTimeout, ConnectionLost)


@dataclass
class MediaListener:
    """What the hub wants to hear about; every callback is plain and must not block.

    `failure` says which part failed: a recorder (the recording failed), a recorder's
    mere warning, or an endpoint."""

    candidate: Callable[[str, str, dict[str, Any]], None]  # viewer, target, candidate
    flow: Callable[[str, str, str, str, bool], None]  # endpoint owner, target, dir, kind, on
    recording: Callable[[str], None]  # participant whose recorder started
    failure: Callable[[str, FailedPart, str], None]  # participant, part, description
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
    kinds: frozenset[str] = frozenset()
    subscriptions: dict[str, WebRtcEndpoint] = field(default_factory=dict)
    #: Targets ("publish" or a source) whose negotiation transaction is in flight.
    negotiating: set[str] = field(default_factory=set)


@dataclass
class Negotiation:
    """One offer's transaction: what it created and which of its ops did what."""

    owner: str
    target: str
    tx: Transaction
    pipeline: MediaPipeline
    new_pipeline: bool
    ep: WebRtcEndpoint
    recorder: RecorderEndpoint | None = None
    connected: set[str] = field(default_factory=set)
    answer: Pending[str] | None = None
    gathering: Pending[None] | None = None
    candidates: list[tuple[Pending[None], dict[str, Any]]] = field(default_factory=list)

    @property
    def created(self) -> list[MediaObject]:
        if self.new_pipeline:
            return [self.pipeline]  # releasing it takes its children along
        return [o for o in (self.ep, self.recorder) if o is not None]


def error_of(pending: Pending[Any]) -> BaseException | None:
    try:
        pending.value  # noqa: B018 - raises the op's error
    except BaseException as exc:
        return exc
    return None


def candidate_args(candidate: dict[str, Any]) -> tuple[str, str, int] | None:
    """(candidate, sdpMid, sdpMLineIndex) for addIceCandidate; None for end-of-candidates,
    which KMS ignores."""
    line = str(candidate.get("candidate", ""))
    if not line:
        return None
    mid = candidate.get("sdpMid")
    index = candidate.get("sdpMLineIndex")
    return line, str(mid if mid is not None else "0"), int(index) if isinstance(index, int) else 0
