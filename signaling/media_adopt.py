"""Taking over a call's media after the signalling process that made it died.

The pipeline keeps streaming and recording on the media server. A new process finds its
objects by the tags they were created with (`telemed.endpoint` = "<owner>/<target>"),
claims each by touching it (on KMS a session owns what it touched, KMS-SOURCE-NOTES.md
item 8, so the garbage collector no longer counts them as orphans), subscribes to their
events again and re-reads what the events of the gap would have said.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from kurento_ctl.errors import KurentoError
from kurento_ctl.events import Error, Recording
from kurento_ctl.objects import MediaObject, MediaPipeline, RecorderEndpoint, WebRtcEndpoint
from kurento_ctl.sweep import TAG_CALL, TAG_ENDPOINT
from kurento_ctl.transaction import Transaction
from signaling.media_resume import refresh
from signaling.media_types import Endpoints

if TYPE_CHECKING:
    from signaling.media import CallMedia

__all__ = ["AdoptionFailed", "adopt"]

log = logging.getLogger(__name__)


class AdoptionFailed(Exception):
    """The call's media cannot be taken over: its server or its pipeline is gone."""


def _tags(raw: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in raw or [] if isinstance(t, dict) and "key" in t}


def _recorded(media: CallMedia, owner: str, _event: Any) -> None:
    media._recorded(owner)


def _path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


async def adopt(media: CallMedia, server_url: str, pipeline_id: str,
                kinds: dict[str, frozenset[str]]) -> dict[str, Endpoints]:
    """Claims every object of the call's pipeline; returns the endpoints found per owner.
    `kinds`: what each publisher sends, as the call record says."""
    server = next((s for s in media.pool.servers if s.url == server_url), None)
    client = server.call_client() if server is not None and server.up else None
    if server is None or client is None:
        raise AdoptionFailed(f"media server {server_url} is not reachable")
    pipeline = MediaPipeline(client, pipeline_id)
    try:
        if _tags(await pipeline.invoke("getTags")).get(TAG_CALL) != media.call_id:
            raise AdoptionFailed(f"pipeline {pipeline_id} is not this call's")
        children = await pipeline.invoke("getChildren") or []
        # Asked together: the client pipelines them, so a call costs one round trip here
        # rather than one per object (adoption holds up the start of serving).
        tags = await asyncio.gather(*(MediaObject(client, child).invoke("getTags")
                                      for child in children))
        found: list[tuple[str, str, str]] = []
        for child, raw in zip(children, tags, strict=True):
            owner, _, target = _tags(raw).get(TAG_ENDPOINT, "").partition("/")
            if owner and target:
                found.append((owner, target, child))
    except KurentoError as exc:
        raise AdoptionFailed(f"pipeline {pipeline_id}: {exc}") from None

    entries: dict[str, Endpoints] = {}
    tx = Transaction(client)
    for owner, target, object_id in found:
        entry = entries.setdefault(owner, Endpoints(kinds=kinds.get(owner, frozenset())))
        if target == "recorder":
            recorder = RecorderEndpoint(client, object_id)
            entry.recorder = recorder
            tx.subscribe(recorder, Recording, functools.partial(_recorded, media, owner))
            tx.subscribe(recorder, Error, functools.partial(media._recorder_error, owner))
            continue
        ep = WebRtcEndpoint(client, object_id)
        media._watch(tx, ep, owner, target)
        if target == "publish":
            entry.publisher = ep
        else:
            entry.subscriptions[target] = ep
    if len(tx):
        try:
            await tx.commit()
        except KurentoError as exc:
            raise AdoptionFailed(f"subscribing to the call's events failed: {exc}") from None
    recorded = [e for e in entries.values() if e.recorder is not None]
    uris = await asyncio.gather(*(e.recorder.invoke("getUri") for e in recorded
                                  if e.recorder is not None), return_exceptions=True)
    for entry, uri in zip(recorded, uris, strict=True):
        if isinstance(uri, KurentoError):
            continue  # its file stays unnamed; the recording goes on all the same
        if isinstance(uri, BaseException):
            raise uri
        entry.recorder_path = _path(str(uri or ""))
    media.adopted(server, pipeline, entries)
    await refresh(media)
    log.info("= took over pipeline %s on %s: %s", pipeline_id, server_url,
             ", ".join(f"{o}({'p' if e.publisher else '-'}{len(e.subscriptions)})"
                       for o, e in sorted(entries.items())) or "no endpoints",
             extra=media.log_extra)
    return entries

