"""What `CallMedia` does when KMS may have done more than it was told: a session resumed
after a socket gap (its events were dropped, KMS-SOURCE-NOTES.md item 6), and transactions
whose reply never came (they may have created objects whose ids we never learnt)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from kurento_ctl.errors import KurentoError
from kurento_ctl.objects import MediaType, WebRtcEndpoint
from kurento_ctl.sweep import sweep_server

if TYPE_CHECKING:
    from signaling.media import CallMedia

__all__ = ["refresh", "release_unknown"]

log = logging.getLogger(__name__)


async def refresh(call: CallMedia) -> None:
    """Reads again what the events of a socket gap would have said: KMS drops events
    raised while a session has no socket, and replays none on resume."""
    for owner, entry in list(call.participants.items()):
        endpoints = [("publish", entry.publisher)] if entry.publisher else []
        endpoints += list(entry.subscriptions.items())
        for target, ep in endpoints:
            assert ep is not None
            kinds = entry.kinds if target == "publish" else frozenset({"audio", "video"})
            try:
                for kind in sorted(kinds):
                    media: MediaType = "AUDIO" if kind == "audio" else "VIDEO"
                    call._flow(ep, owner, target, "in", kind,
                               await ep.is_media_flowing_in(media), read=True)
                    call._flow(ep, owner, target, "out", kind,
                               await ep.is_media_flowing_out(media), read=True)
                await _refresh_ice(call, owner, target, ep)
            except KurentoError as exc:
                log.warning("! re-reading %s/%s after a resume failed: %s", owner, target,
                            exc, extra=call.log_extra)
        if entry.recorder is not None and owner not in call._recording:
            with contextlib.suppress(KurentoError):
                if await entry.recorder.invoke("getState") == "START":
                    call._recorded(owner)

async def _refresh_ice(call: CallMedia, owner: str, target: str, ep: WebRtcEndpoint) -> None:
    if call.ice_states.get((owner, target)) in ("CONNECTED", "READY"):
        return
    states = await ep.invoke("getIceConnectionState")
    for item in states if isinstance(states, list) else []:
        state = item.get("state") if isinstance(item, dict) else None
        if isinstance(state, str) and state != call.ice_states.get((owner, target)):
            call._ice(owner, target, state)


async def release_unknown(call: CallMedia) -> None:
    """A transaction whose reply was lost may have made a pipeline we never learnt of:
    find this call's pipelines by tag on every reachable server and release them."""
    for server in [s for s in call.pool.servers if s.up]:
        try:
            report = await sweep_server(server.url, lambda _: set(),
                                        only_call=call.call_id)
        except (KurentoError, OSError, TimeoutError) as exc:
            log.warning("! looking for this call's lost pipelines on %s failed: %s",
                        server.url, exc, extra=call.log_extra)
            continue
        if report.released:
            log.warning("! released %d pipelines of this call made by transactions "
                        "without a reply", len(report.released), extra=call.log_extra)
