"""The media layer's callbacks turned into typed events for the call session.

`CallMedia` reports through plain callbacks (`MediaListener`); this is the one place they
become `signaling.events` objects, so the call logic only ever matches on types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from signaling.events import (
    CandidatesDropped,
    FlowChanged,
    IcePairSelected,
    IceStateChanged,
    MediaEvent,
    MediaFailed,
    RecordingStarted,
)
from signaling.media import MediaListener
from signaling.protocol import encode

__all__ = ["media_listener"]

def media_listener(on_event: Callable[[MediaEvent], None],
                   send: Callable[[str, str], None]) -> MediaListener:
    """A listener that hands typed events to `on_event`; the media server's own ICE
    candidates go straight to the browser through `send(participant, text)`."""

    def candidate(owner: str, target: str, cand: dict[str, Any]) -> None:
        send(owner, encode("candidate", target=target, **cand))

    return MediaListener(
        candidate=candidate,
        flow=lambda owner, target, direction, kind, flowing: on_event(FlowChanged(
            owner=owner, target=target, direction=direction, kind=kind, flowing=flowing)),
        recording=lambda pid: on_event(RecordingStarted(participant=pid)),
        failure=lambda pid, part, what: on_event(MediaFailed(
            participant=pid, part=part, description=what)),
        ice_state=lambda pid, target, state: on_event(IceStateChanged(
            participant=pid, target=target, state=state)),
        dropped=lambda pid, direction, reasons: on_event(CandidatesDropped(
            participant=pid, direction=direction, reasons=tuple(reasons))),
        pair=lambda pid, target, kind: on_event(IcePairSelected(
            participant=pid, target=target, remote=kind)),
    )
