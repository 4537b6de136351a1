"""The generic MediaObject/MediaElement surface of `core.kmd.json`, for every object.

What any Kurento application may call on any object — names, tags, parent and children,
creation time, source and sink connections, the bandwidth and bitrate properties, stats —
answered as KMS answers it. The element classes serve their own methods first; this fills
in the rest. A method KMS declares that the embedded server does not do (GStreamer dot
graphs, data channels, caps formats…) is refused with KMS's `NOT_IMPLEMENTED` (40006),
never with "method not found", so a client can tell "not here" from "misspelt".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import Element, KmsError, MediaObjectImpl, MediaPipelineImpl, Method

if TYPE_CHECKING:
    from mediaserver.core import MediaServer

__all__ = ["ObjectState", "generic_methods", "not_implemented"]

#: Settable properties KMS declares, by declaring class, with KMS's documented defaults.
#: The embedded server keeps the value (a get returns what was set) but, like KMS after
#: media started, does not change its encoders for it.
PROPERTIES: dict[str, dict[str, Any]] = {
    "MediaPipeline": {"latencyStats": False},
    "MediaElement": {"encoderBitrate": 300000, "minEncoderBitrate": 0, "maxEncoderBitrate": 0},
    "SdpEndpoint": {"maxAudioRecvBandwidth": 0, "maxVideoRecvBandwidth": 0},
    "BaseRtpEndpoint": {"minVideoRecvBandwidth": 0, "minVideoSendBandwidth": 100,
                        "maxVideoSendBandwidth": 500, "mtu": 1200},
    "WebRtcEndpoint": {"iceTcp": True},
}

#: Declared in kmd.json, not done here: answered with 40006.
UNIMPLEMENTED: dict[str, frozenset[str]] = {
    "MediaPipeline": frozenset({"getGstreamerDot", "dumpGstreamerDot"}),
    "MediaElement": frozenset({"setAudioFormat", "setVideoFormat", "getGstreamerDot",
                               "dumpGstreamerDot", "isMediaTranscoding"}),
    "BaseRtpEndpoint": frozenset({"requestKeyframe", "getRembParams", "setRembParams"}),
    "WebRtcEndpoint": frozenset({"createDataChannel", "closeDataChannel",
                                 "getDtlsConnectionState"}),
    "UriEndpoint": frozenset(),
    "PlayerEndpoint": frozenset({"getVideoInfo", "getElementGstreamerDot", "getPosition",
                                 "setPosition"}),
    "ServerManager": frozenset({"getKmd"}),
}


@dataclass
class ObjectState:
    """What KMS keeps on every MediaObject and our element classes do not."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    send_tags_in_events: bool = False
    properties: dict[str, Any] = field(default_factory=dict)


def classes(obj: MediaObjectImpl) -> list[str]:
    """`obj`'s Kurento class and its ancestors, most derived first."""
    names = [obj.type_name, *(h.removeprefix("kurento.") for h in obj.hierarchy)]
    return list(dict.fromkeys(names))


def not_implemented(obj: MediaObjectImpl, operation: str) -> bool:
    return any(operation in UNIMPLEMENTED.get(c, ()) for c in classes(obj))


def _tag(key: str, value: str) -> dict[str, str]:
    return {"__module__": "kurento", "__type__": "Tag", "key": key, "value": value}


def _connection(source: Element, sink: Element, kind: str) -> dict[str, str]:
    return {"__module__": "kurento", "__type__": "ElementConnectionData",
            "source": source.id, "sink": sink.id, "type": kind.upper(),
            "sourceDescription": "default", "sinkDescription": "default"}


def _string(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise KmsError(ErrorCode.MARSHALL_ERROR, f"'{name}' parameter should be a string")
    return value


def generic_methods(server: MediaServer, obj: MediaObjectImpl,
                    state: ObjectState) -> dict[str, Method]:
    """The MediaObject (and, for elements, MediaElement) methods KMS serves on `obj`."""

    async def add_tag(p: dict[str, Any]) -> None:
        state.tags[_string(p, "key")] = _string(p, "value")

    async def remove_tag(p: dict[str, Any]) -> None:
        state.tags.pop(_string(p, "key"), None)

    async def get_tag(p: dict[str, Any]) -> str:
        key = _string(p, "key")
        if key not in state.tags:
            raise KmsError(ErrorCode.MEDIA_OBJECT_TAG_KEY_NOT_FOUND, "Tag key not found")
        return state.tags[key]

    async def get_tags(p: dict[str, Any]) -> list[dict[str, str]]:
        return [_tag(k, v) for k, v in state.tags.items()]

    async def get_name(p: dict[str, Any]) -> str:
        return state.name

    async def set_name(p: dict[str, Any]) -> None:
        state.name = _string(p, "name")

    async def get_send_tags(p: dict[str, Any]) -> bool:
        return state.send_tags_in_events

    async def set_send_tags(p: dict[str, Any]) -> None:
        value = p.get("sendTagsInEvents")
        if not isinstance(value, bool):
            raise KmsError(ErrorCode.MARSHALL_ERROR,
                           "'sendTagsInEvents' parameter should be a boolean")
        state.send_tags_in_events = value

    async def get_id(p: dict[str, Any]) -> str:
        return obj.id

    async def get_pipeline(p: dict[str, Any]) -> str | None:
        return obj.pipeline.id if obj.pipeline is not None else None

    async def get_parent(p: dict[str, Any]) -> str | None:
        # An element's parent is its pipeline; a pipeline's is the ServerManager in KMS.
        if isinstance(obj, MediaPipelineImpl):
            return server.manager.id
        return obj.pipeline.id if obj.pipeline is not None else None

    async def get_children(p: dict[str, Any]) -> list[str]:
        if isinstance(obj, MediaPipelineImpl):
            return list(obj.children)
        return []

    async def get_creation_time(p: dict[str, Any]) -> int:
        return int(obj.created)

    methods = {
        "addTag": Method(add_tag, ("key", "value")),
        "removeTag": Method(remove_tag, ("key",)),
        "getTag": Method(get_tag, ("key",)),
        "getTags": Method(get_tags),
        "getName": Method(get_name),
        "setName": Method(set_name, ("name",)),
        "getSendTagsInEvents": Method(get_send_tags),
        "setSendTagsInEvents": Method(set_send_tags, ("sendTagsInEvents",)),
        "getId": Method(get_id),
        "getMediaPipeline": Method(get_pipeline),
        "getParent": Method(get_parent),
        "getChildren": Method(get_children),
        "getCreationTime": Method(get_creation_time),
    }
    for cls in classes(obj):
        for prop, default in PROPERTIES.get(cls, {}).items():
            methods |= _property(state, prop, default)
    if isinstance(obj, Element):
        methods |= _element_methods(obj)
    if "UriEndpoint" in classes(obj):
        methods["getState"] = Method(_constant(str(getattr(obj, "state", "STOP"))))
    if "WebRtcEndpoint" in classes(obj):
        # One IceConnection per component, as KMS lists them; the embedded server has one
        # bundled stream and component.
        methods["getIceConnectionState"] = Method(_constant([{
            "__module__": "kurento", "__type__": "IceConnection", "streamId": "1",
            "componentId": 1, "state": str(getattr(obj, "_ice_state", "DISCONNECTED"))}]))
    return methods


def _constant(value: Any) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    async def get(p: dict[str, Any]) -> Any:
        return value
    return get


def _property(state: ObjectState, prop: str, default: Any) -> dict[str, Method]:
    cap = prop[0].upper() + prop[1:]
    kind: type = bool if isinstance(default, bool) else type(default)

    async def get(p: dict[str, Any]) -> Any:
        return state.properties.get(prop, default)

    async def set_(p: dict[str, Any]) -> None:
        value = p.get(prop)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = "a boolean" if kind is bool else "an integer"
            raise KmsError(ErrorCode.MARSHALL_ERROR, f"'{prop}' parameter should be {what}")
        state.properties[prop] = value

    return {f"get{cap}": Method(get), f"set{cap}": Method(set_, (prop,))}


def _element_methods(element: Element) -> dict[str, Method]:
    def kinds(p: dict[str, Any]) -> list[str]:
        media_type = p.get("mediaType")
        if media_type is None:
            return ["audio", "video"]
        if media_type in ("AUDIO", "VIDEO"):
            return [media_type.lower()]
        if media_type == "DATA":
            return []
        raise KmsError(ErrorCode.MARSHALL_ERROR, "Invalid value for 'MediaType'")

    async def sources(p: dict[str, Any]) -> list[dict[str, str]]:
        return [_connection(element.sources[k], element, k) for k in kinds(p)
                if k in element.sources]

    async def sinks(p: dict[str, Any]) -> list[dict[str, str]]:
        return [_connection(element, sink, k) for k in kinds(p)
                for sink in sorted(element.sinks.get(k, ()), key=lambda e: e.id)]

    return {
        "getSourceConnections": Method(sources, (), ("mediaType", "description")),
        "getSinkConnections": Method(sinks, (), ("mediaType", "description")),
    }


def element_stats(obj: MediaObjectImpl) -> dict[str, Any]:
    """KMS's `ElementStats` entry for an element that reports nothing finer."""
    return {obj.id: {"__module__": "kurento", "__type__": "ElementStats", "id": obj.id,
                     "type": "element", "timestampMillis": int(time.time() * 1000),
                     "inputLatency": []}}
