"""Typed proxies of Kurento's media objects, named exactly as Kurento names them.

Methods keep Kurento's operation names in snake_case (`process_offer` invokes
`processOffer`). Subscribe before acting: events fired before a subscription are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import KurentoError
from kurento_ctl.events import KurentoEvent, parse_event
from kurento_ctl.jsonrpc import Notification

__all__ = [
    "Composite",
    "Hub",
    "HubPort",
    "MediaElement",
    "MediaObject",
    "MediaPipeline",
    "MediaType",
    "PlayerEndpoint",
    "RecorderEndpoint",
    "ServerManager",
    "Subscription",
    "WebRtcEndpoint",
    "pipeline_scope",
]

log = logging.getLogger(__name__)

MediaType = Literal["AUDIO", "VIDEO", "DATA"]
MediaProfile = Literal["WEBM", "WEBM_AUDIO_ONLY", "WEBM_VIDEO_ONLY", "MKV", "MP4"]
E = TypeVar("E", bound=KurentoEvent)


def typed_handler(handler: Callable[[Any], None]) -> Callable[[Notification], None]:
    """Wraps `handler(event)` so that it receives parsed, typed events."""
    def on_notification(n: Notification) -> None:
        handler(parse_event(n))
    return on_notification


def ice_candidate(candidate: str, sdp_mid: str, sdp_mline_index: int) -> dict[str, Any]:
    """Kurento's `IceCandidate` complex type (all three fields are required)."""
    return {"__module__": "kurento", "__type__": "IceCandidate", "candidate": candidate,
            "sdpMid": sdp_mid, "sdpMLineIndex": sdp_mline_index}


def connect_params(sink: MediaObject, media_type: MediaType | None) -> dict[str, Any]:
    params: dict[str, Any] = {"sink": sink.id}
    if media_type is not None:
        params["mediaType"] = media_type
    return params


def webrtc_endpoint_params(*, recvonly: bool, sendonly: bool) -> dict[str, Any]:
    """Constructor params of a WebRtcEndpoint; left out when false, as kurento-client does."""
    return {k: True for k, v in (("recvonly", recvonly), ("sendonly", sendonly)) if v}


def recorder_endpoint_params(uri: str, *, media_profile: MediaProfile,
                             stop_on_end_of_stream: bool) -> dict[str, Any]:
    return {"uri": uri, "mediaProfile": media_profile,
            "stopOnEndOfStream": stop_on_end_of_stream}


class Subscription:
    """A server-side subscription and our local handler; `cancel()` removes both."""

    def __init__(self, obj: MediaObject, event_type: str, subscription_id: str,
                 handler: Callable[[Notification], None]) -> None:
        self.obj = obj
        self.event_type = event_type
        self.id = subscription_id
        self._handler = handler

    async def cancel(self) -> None:
        self.obj.client.remove_handler(self.obj.id, self.event_type, self._handler)
        with contextlib.suppress(KurentoError):
            await self.obj.client.request("unsubscribe", {
                "object": self.obj.id, "subscription": self.id})


class MediaObject:
    kurento_type = "MediaObject"

    def __init__(self, client: KurentoClient, object_id: str) -> None:
        self.client = client
        self.id = object_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    async def invoke(self, operation: str, **params: Any) -> Any:
        body: dict[str, Any] = {"object": self.id, "operation": operation}
        if params:
            body["operationParams"] = params
        result = await self.client.request("invoke", body)
        return result.get("value") if isinstance(result, dict) else None

    async def subscribe(self, event_type: type[E] | str,
                        handler: Callable[[Any], None]) -> Subscription:
        """Calls `handler(event)` for each event of that type; typed when a class is given."""
        name = event_type if isinstance(event_type, str) else event_type.__name__
        on_notification = typed_handler(handler)
        # Register locally first: an event may follow the subscribe reply in the same read.
        self.client.add_handler(self.id, name, on_notification)
        try:
            result = await self.client.request("subscribe", {"object": self.id, "type": name})
        except BaseException:
            self.client.remove_handler(self.id, name, on_notification)
            raise
        return Subscription(self, name, str(result.get("value")), on_notification)

    async def events(self, event_type: type[E]) -> AsyncIterator[E]:
        """Async iterator over events of one type; ends when the caller stops iterating."""
        queue: asyncio.Queue[E] = asyncio.Queue()
        sub = await self.subscribe(event_type, queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            await sub.cancel()

    async def release(self) -> None:
        try:
            await self.client.request("release", {"object": self.id})
        finally:
            self.client.drop_object(self.id)


class MediaPipeline(MediaObject):
    kurento_type = "MediaPipeline"

    @classmethod
    async def create(cls, client: KurentoClient) -> MediaPipeline:
        result = await client.request("create", {"type": cls.kurento_type,
                                                 "constructorParams": {}, "properties": {}})
        return cls(client, result["value"])

    async def _create(self, cls: type[M], **params: Any) -> M:
        params["mediaPipeline"] = self.id
        result = await self.client.request("create", {
            "type": cls.kurento_type, "constructorParams": params, "properties": {}})
        return cls(self.client, result["value"])

    async def create_webrtc_endpoint(self, *, recvonly: bool = False,
                                     sendonly: bool = False) -> WebRtcEndpoint:
        return await self._create(WebRtcEndpoint, **webrtc_endpoint_params(
            recvonly=recvonly, sendonly=sendonly))

    async def create_recorder_endpoint(self, uri: str, *, media_profile: MediaProfile = "WEBM",
                                       stop_on_end_of_stream: bool = False) -> RecorderEndpoint:
        return await self._create(RecorderEndpoint, **recorder_endpoint_params(
            uri, media_profile=media_profile, stop_on_end_of_stream=stop_on_end_of_stream))

    async def create_player_endpoint(self, uri: str) -> PlayerEndpoint:
        return await self._create(PlayerEndpoint, uri=uri)

    async def create_composite(self, *, width: int | None = None, height: int | None = None,
                               framerate: int | None = None) -> Composite:
        """A mixing hub: every HubPort's video tiled and audio mixed (Kurento transcodes)."""
        params = {k: v for k, v in (("width", width), ("height", height),
                                    ("framerate", framerate)) if v is not None}
        return await self._create(Composite, **params)


M = TypeVar("M", bound=MediaObject)


class MediaElement(MediaObject):
    kurento_type = "MediaElement"

    async def connect(self, sink: MediaElement, media_type: MediaType | None = None) -> None:
        await self.invoke("connect", **connect_params(sink, media_type))

    async def disconnect(self, sink: MediaElement, media_type: MediaType | None = None) -> None:
        await self.invoke("disconnect", **connect_params(sink, media_type))

    async def is_media_flowing_in(self, media_type: MediaType) -> bool:
        return bool(await self.invoke("isMediaFlowingIn", mediaType=media_type))

    async def is_media_flowing_out(self, media_type: MediaType) -> bool:
        return bool(await self.invoke("isMediaFlowingOut", mediaType=media_type))

    async def get_stats(self, media_type: MediaType | None = None) -> dict[str, Any]:
        value = await (self.invoke("getStats", mediaType=media_type) if media_type
                       else self.invoke("getStats"))
        return value if isinstance(value, dict) else {}


class WebRtcEndpoint(MediaElement):
    kurento_type = "WebRtcEndpoint"

    async def process_offer(self, offer: str) -> str:
        return str(await self.invoke("processOffer", offer=offer))

    async def generate_offer(self) -> str:
        return str(await self.invoke("generateOffer"))

    async def process_answer(self, answer: str) -> str:
        return str(await self.invoke("processAnswer", answer=answer))

    async def gather_candidates(self) -> None:
        await self.invoke("gatherCandidates")

    async def add_ice_candidate(self, candidate: str, sdp_mid: str, sdp_mline_index: int) -> None:
        await self.invoke("addIceCandidate",
                          candidate=ice_candidate(candidate, sdp_mid, sdp_mline_index))

    async def set_turn_url(self, turn_url: str) -> None:
        await self.invoke("setTurnUrl", turnUrl=turn_url)

    async def set_stun_server_address(self, address: str) -> None:
        await self.invoke("setStunServerAddress", stunServerAddress=address)

    async def set_stun_server_port(self, port: int) -> None:
        await self.invoke("setStunServerPort", stunServerPort=port)


class RecorderEndpoint(MediaElement):
    kurento_type = "RecorderEndpoint"

    async def record(self) -> None:
        await self.invoke("record")

    async def pause(self) -> None:
        await self.invoke("pause")

    async def stop(self) -> None:
        await self.invoke("stop")

    async def stop_and_wait(self) -> None:
        await self.invoke("stopAndWait")


class PlayerEndpoint(MediaElement):
    kurento_type = "PlayerEndpoint"

    async def play(self) -> None:
        await self.invoke("play")

    async def stop(self) -> None:
        await self.invoke("stop")


class Hub(MediaObject):
    kurento_type = "Hub"

    async def create_port(self) -> HubPort:
        """A port of this hub: connect a source into it, and it out to a sink."""
        result = await self.client.request("create", {
            "type": HubPort.kurento_type, "constructorParams": {"hub": self.id},
            "properties": {}})
        return HubPort(self.client, result["value"])


class Composite(Hub):
    kurento_type = "Composite"


class HubPort(MediaElement):
    kurento_type = "HubPort"


class ServerManager(MediaObject):
    kurento_type = "ServerManager"

    def __init__(self, client: KurentoClient) -> None:
        super().__init__(client, "manager_ServerManager")

    async def get_pipelines(self) -> list[str]:
        return list(await self.invoke("getPipelines") or [])

    async def get_info(self) -> dict[str, Any]:
        value = await self.invoke("getInfo")
        return value if isinstance(value, dict) else {}

    async def get_used_memory(self) -> int:
        return int(await self.invoke("getUsedMemory"))

    async def get_used_cpu(self, interval_ms: int = 100) -> float:
        return float(await self.invoke("getUsedCpu", interval=interval_ms))


@contextlib.asynccontextmanager
async def pipeline_scope(client: KurentoClient) -> AsyncIterator[MediaPipeline]:
    """A pipeline released on every exit path, whatever the body raised."""
    pipeline = await MediaPipeline.create(client)
    try:
        yield pipeline
    finally:
        try:
            await asyncio.shield(pipeline.release())
        except KurentoError as exc:
            log.warning("! releasing %s failed: %s", pipeline.id, exc)
