"""Taking over the calls a dead signalling process was running.

The media server kept streaming and recording them; the call record in Redis says which
pipeline on which server. The new process rebuilds the call from that record, claims every
media object (`media_adopt`), gives everyone who was in the rejoin grace to come back with
`join {resume: true}` and tells the MIS once (`call.resumed`). A call whose media is gone
fails `media-server-lost` instead.
"""

from __future__ import annotations

import logging
from typing import Any

from signaling.call import Call, FailureReason
from signaling.errors import CallError
from signaling.events import CallEvent
from signaling.hub import Hub
from signaling.media_adopt import AdoptionFailed, adopt

__all__ = ["take_over"]

log = logging.getLogger(__name__)


async def take_over(hub: Hub, snap: dict[str, Any]) -> Call:
    """Adopts one call a previous process left `connecting` or `live`."""
    call = Call.taken_over(snap)
    existing = hub.calls.get(call.id)
    if existing is not None:
        return existing  # already running here
    hub.calls[call.id] = call
    session = hub.session(call)
    session.resume()
    try:
        if not call.media_server or not call.pipeline:
            raise AdoptionFailed("the call record names no pipeline (nobody had published)")
        await adopt(session.media, call.media_server, call.pipeline,
                    {p.id: p.published for p in call.participants.values()})
    except AdoptionFailed as exc:
        log.warning("! cannot take the call over: %s", exc, extra={"call_id": call.id})
        # What was recorded before the media went is finalized with the call's end.
        folders = sorted(hub.recordings_root.glob(f"*/*/*/{call.id}"))
        session.media.recordings = sorted(p for f in folders for p in f.glob("*.webm"))
        await hub.end(call.id, FailureReason.MEDIA_SERVER_LOST,
                      f"taken over after a restart, but {exc}")
        return call
    log.info("= call taken over (%s)", call.state.value, extra={"call_id": call.id})
    hub.emit(CallEvent.RESUMED, call, {})
    # Their slots held and renewed from here: the dead process renewed nothing, and a
    # participant who takes the whole grace to come back must still find their slot.
    for participant in session.taken_over():
        try:
            await session.lease_turn(participant.id)
        except CallError as exc:
            log.warning("! TURN lease of %s not renewed at takeover: %s", participant.id,
                        exc.message, extra={"call_id": call.id})
    return call
