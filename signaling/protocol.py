"""The browser ↔ signalling protocol, version 1: messages, parsing and encoding. No I/O.

Every message is a JSON object with a `type`. Requests from the client carry an `id`
(string or integer); the reply names it in `re`. Server events carry no `re`. The
WebSocket subprotocol `telemed.v1` (optional) or `hello.protocol` names the version.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from signaling.errors import MessageError

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "Accept",
    "Cancel",
    "Candidate",
    "ClientEvent",
    "ClientMessage",
    "Decline",
    "End",
    "Hello",
    "Join",
    "Leave",
    "Ping",
    "Publish",
    "Ring",
    "Subscribe",
    "encode",
    "parse_client_message",
    "schemas",
]

PROTOCOL_VERSION = 1
SUBPROTOCOL = "telemed.v1"
RequestId = str | int | None


@dataclass(frozen=True, kw_only=True)
class Hello:
    """Authenticates the socket with a join token."""

    TYPE: ClassVar[str] = "hello"
    id: RequestId = None
    token: str
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, kw_only=True)
class Join:
    """Enters the call the token opens; the reply is `joined`. `resume`: this browser still
    holds its peer connections (its socket dropped, or the service restarted) and would
    keep them if the media server still has their endpoints."""

    TYPE: ClassVar[str] = "join"
    id: RequestId = None
    resume: bool = False


@dataclass(frozen=True, kw_only=True)
class Publish:
    """An SDP offer (sendonly) for this participant's camera and microphone."""

    TYPE: ClassVar[str] = "publish"
    id: RequestId = None
    sdp: str


@dataclass(frozen=True, kw_only=True)
class Subscribe:
    """An SDP offer (recvonly) to receive another participant's media."""

    TYPE: ClassVar[str] = "subscribe"
    id: RequestId = None
    participant: str
    sdp: str


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A trickled ICE candidate for `target`: `publish` or a participant id subscribed to.

    An empty `candidate` is end-of-candidates.
    """

    TYPE: ClassVar[str] = "candidate"
    id: RequestId = None
    target: str
    candidate: str
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None


@dataclass(frozen=True, kw_only=True)
class Leave:
    TYPE: ClassVar[str] = "leave"
    id: RequestId = None


@dataclass(frozen=True, kw_only=True)
class End:
    """Ends the call for everyone (doctors and consultants only)."""

    TYPE: ClassVar[str] = "end"
    id: RequestId = None


@dataclass(frozen=True, kw_only=True)
class ClientEvent:
    """The client's diagnostics (ICE/connection state changes, media it receives).

    `event` `mediaReceived` with `data.participant` and `data.kinds` tells the watchdog
    that media from that participant reaches the browser.
    """

    TYPE: ClassVar[str] = "clientEvent"
    id: RequestId = None
    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Ring:
    """A referral: the doctor rings a consultant of the call who is online (said `hello`)."""

    TYPE: ClassVar[str] = "ring"
    id: RequestId = None
    participant: str


@dataclass(frozen=True, kw_only=True)
class Accept:
    """The rung consultant takes the call; both sides then `join`."""

    TYPE: ClassVar[str] = "accept"
    id: RequestId = None


@dataclass(frozen=True, kw_only=True)
class Decline:
    """The rung consultant refuses the call; it fails with reason `declined`."""

    TYPE: ClassVar[str] = "decline"
    id: RequestId = None


@dataclass(frozen=True, kw_only=True)
class Cancel:
    """The ringing doctor hangs up before an answer; the call ends."""

    TYPE: ClassVar[str] = "cancel"
    id: RequestId = None


@dataclass(frozen=True, kw_only=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    id: RequestId = None


ClientMessage = (Hello | Join | Publish | Subscribe | Candidate | Leave | End | ClientEvent
                 | Ring | Accept | Decline | Cancel | Ping)
MESSAGES: dict[str, type[Any]] = {
    cls.TYPE: cls for cls in typing.get_args(ClientMessage)
}

MAX_FIELD = {"sdp": 32768, "candidate": 1024, "token": 4096, "id": 128, "sdpMid": 64,
             "event": 64}
#: Objects and arrays nest at most this deep, the message itself counting as one. Deeper
#: input is refused here: the history journal, the webhooks and Redis all serialize it
#: again, recursively, and Python's recursion limit (~1,000) must never be reached there.
MAX_DEPTH = 16
#: A clientEvent carries a few diagnostics; it is kept on the call's timeline, so it is
#: held to far less than other messages.
MAX_CLIENT_EVENT = 8192
#: Integer request ids are echoed back: keep them exact in a browser's JavaScript numbers.
MAX_SAFE_INTEGER = 2**53 - 1


def _predicate(tp: Any) -> Callable[[Any], bool]:
    """`tp`'s type test as one closure, made once per field: resolving `typing` origins
    on every message was a tenth of the hub's time per candidate (bench.signalling)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        plain = tuple(a for a in args if a in (str, dict))
        rest = [_predicate(a) for a in args if a not in (str, dict)]
        # The common fields are `str`, `str | None`, `str | int | None`: isinstance first.
        return lambda v: isinstance(v, plain) or any(p(v) for p in rest)
    if tp is type(None):
        return lambda v: v is None
    if origin is Literal:
        allowed = typing.get_args(tp)
        return lambda v: v in allowed
    if origin is dict or tp is dict:
        return lambda v: isinstance(v, dict)
    if tp is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    return lambda v: isinstance(v, tp)


def parse_client_message(text: str | bytes, *, max_size: int = 65536) -> ClientMessage:
    """The message, or MessageError with the code and the field at fault.

    The error carries the request's `id` when one could be read, so the reply names it.
    """
    if len(text) > max_size:
        raise MessageError(f"message of {len(text)} bytes exceeds {max_size}",
                           code="message.too_large")
    try:
        obj = _DECODER.decode(text) if isinstance(text, str) else _DECODER.decode(
            text.decode(json.detect_encoding(text), "surrogatepass"))
    except RecursionError:
        raise MessageError(f"nested deeper than {MAX_DEPTH}") from None
    except (ValueError, UnicodeDecodeError):
        raise MessageError("not valid JSON", code="message.malformed") from None
    if not isinstance(obj, dict):
        raise MessageError("a message is a JSON object", code="message.malformed")
    rid = obj.get("id")
    try:
        _check_tree(obj)
        if obj.get("type") == ClientEvent.TYPE and len(text) > MAX_CLIENT_EVENT:
            raise MessageError(f"clientEvent: above {MAX_CLIENT_EVENT} bytes")
        return _build(obj)
    except MessageError as exc:
        if _valid_id(rid):
            exc.request_id = rid
        raise


class _NonFinite:
    """NaN, ±Infinity or a float beyond double range, kept as a marker until the message's
    id is known, so the refusal names the request. They are not JSON: echoed into the REST
    API or a webhook they would make the MIS's parser fail."""

    def __init__(self, text: str) -> None:
        self.text = text[:20]


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)  # 1e400 parses as inf without passing parse_constant
    return value if math.isfinite(value) else _NonFinite(text)


#: Made once: `json.loads` with hooks builds a new decoder for every message.
_DECODER = json.JSONDecoder(parse_constant=_NonFinite, parse_float=_finite_float)


def _valid_id(rid: object) -> bool:
    """Whether `rid` may be echoed in `re`: a short, encodable string or a safe integer."""
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -MAX_SAFE_INTEGER <= rid <= MAX_SAFE_INTEGER
    return isinstance(rid, str) and len(rid) <= MAX_FIELD["id"] and _encodable(rid)


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates (`"\\ud800"` is valid JSON): UTF-8 cannot
    carry them, so neither the socket's writer, Redis nor a webhook could send them on."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_tree(obj: dict[str, Any]) -> None:
    """Container depth (objects and arrays) and string encodability of the whole message,
    without recursion."""
    for key, value in obj.items():
        # Most messages are flat with ASCII text (a candidate, a ping): judged in one pass.
        if not key.isascii() or isinstance(value, (dict, list, _NonFinite)) \
                or (isinstance(value, str) and not value.isascii()):
            break
    else:
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH and isinstance(node, (dict, list)):
            raise MessageError(f"nested deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            for key, value in node.items():
                if not _encodable(key):
                    raise MessageError("a key holds a lone surrogate (not UTF-8)")
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, str) and not _encodable(node):
            raise MessageError("a string holds a lone surrogate (not UTF-8)")
        elif isinstance(node, _NonFinite):
            raise MessageError(f"{node.text} is not a JSON number")


class _Shape:
    """A message class's fields, resolved once: per field its type test and length cap,
    and the names a message must carry."""

    def __init__(self, cls: type[Any]) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self.cls = cls
        self.tests = {f.name: _predicate(hints[f.name]) for f in fields}
        self.caps = {f.name: MAX_FIELD.get(f.name, 4096) for f in fields}
        self.required = frozenset(
            f.name for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


_SHAPES: dict[str, _Shape] = {kind: _Shape(cls) for kind, cls in MESSAGES.items()}


def _build(obj: dict[str, Any]) -> ClientMessage:
    kind = obj.get("type")
    shape = _SHAPES.get(kind) if isinstance(kind, str) else None
    if shape is None:
        raise MessageError(f"unknown message type {kind!r}"[:120], code="message.unknown_type")
    tests, caps = shape.tests, shape.caps
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "type":
            continue
        test = tests.get(key)
        if test is None:
            raise MessageError(f"{kind}: unknown field {key!r}"[:120])
        if not test(value):
            raise MessageError(f"{kind}.{key}: wrong type")
        if isinstance(value, str) and len(value) > caps[key]:
            raise MessageError(f"{kind}.{key}: too long")
        if key == "id" and not _valid_id(value):
            raise MessageError(f"{kind}.id: an integer within ±(2**53 - 1) or a string")
        kwargs[key] = value
    if not shape.required.issubset(kwargs):
        # Reported in declaration order, as before.
        missing = next(name for name in tests if name in shape.required and name not in kwargs)
        raise MessageError(f"{kind}.{missing}: required")
    return typing.cast(ClientMessage, shape.cls(**kwargs))


#: Made once: `json.dumps` with options builds a new encoder for every message.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(type_: str, *, re: RequestId = None, **fields: Any) -> str:
    """A server message: events have no `re`; replies name the request they answer."""
    body: dict[str, Any] = {"type": type_}
    if re is not None:
        body["re"] = re
    body.update(fields)
    return _ENCODER.encode(body)


def error(code: str, message: str, *, re: RequestId = None) -> str:
    return encode("error", re=re, code=code, message=message)


def _schema(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(a) for a in typing.get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if tp is str:
        return {"type": "string"}
    if tp is int:
        return {"type": "integer"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is dict or origin is dict:
        return {"type": "object"}
    raise TypeError(tp)


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every client message, derived from the dataclasses."""
    out: dict[str, dict[str, Any]] = {}
    for kind, cls in MESSAGES.items():
        hints = typing.get_type_hints(cls)
        props: dict[str, Any] = {"type": {"const": kind}}
        required = ["type"]
        for f in dataclasses.fields(cls):
            props[f.name] = _schema(hints[f.name])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        out[kind] = {"type": "object", "properties": props, "required": required,
                     "additionalProperties": False}
    return out
