"""Kurento's JSON-RPC 2.0, without I/O: used by the client and by the embedded media server.

The client side is a state machine in the manner of websockets' sans-I/O core: feed it
received text with `receive_text()`, collect what it produced with `events_received()` and
`data_to_send()`. The server side is a handful of pure functions that produce replies in
KMS's exact shape (compact JSON, sorted keys, ASCII escapes).
"""

from __future__ import annotations

import enum
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kurento_ctl.errors import ProtocolViolation

__all__ = [
    "ClientProtocol",
    "ErrorCode",
    "Notification",
    "Reply",
    "Request",
    "dumps",
    "encode_error",
    "encode_event",
    "encode_operations",
    "encode_result",
    "parse_request",
    "transaction_replies",
]

log = logging.getLogger(__name__)


class ErrorCode(enum.IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    SERVER_ERROR = -32000
    MARSHALL_ERROR = 40001
    UNEXPECTED_ERROR = 40003
    CONNECT_ERROR = 40004
    UNSUPPORTED_MEDIA_TYPE = 40005
    NOT_IMPLEMENTED = 40006
    INVALID_SESSION = 40007
    MALFORMED_TRANSACTION = 40008
    NOT_ENOUGH_RESOURCES = 40009
    MEDIA_OBJECT_TYPE_NOT_FOUND = 40100
    MEDIA_OBJECT_NOT_FOUND = 40101
    MEDIA_OBJECT_CONSTRUCTOR_NOT_FOUND = 40104
    MEDIA_OBJECT_METHOD_NOT_FOUND = 40105
    MEDIA_OBJECT_EVENT_NOT_SUPPORTED = 40106
    MEDIA_OBJECT_ILLEGAL_PARAM_ERROR = 40107
    MEDIA_OBJECT_NOT_AVAILABLE = 40108
    MEDIA_OBJECT_NOT_FOUND_TRANSACTION_NO_COMMIT = 40109
    MEDIA_OBJECT_TAG_KEY_NOT_FOUND = 40110
    MEDIA_OBJECT_OPERATION_NOT_SUPPORTED = 40111
    SDP_CREATE_ERROR = 40200
    SDP_PARSE_ERROR = 40201
    SDP_END_POINT_NO_LOCAL_SDP_ERROR = 40202
    SDP_END_POINT_NO_REMOTE_SDP_ERROR = 40203
    SDP_END_POINT_GENERATE_OFFER_ERROR = 40204
    SDP_END_POINT_PROCESS_OFFER_ERROR = 40205
    SDP_END_POINT_PROCESS_ANSWER_ERROR = 40206
    SDP_CONFIGURATION_ERROR = 40207
    SDP_END_POINT_ALREADY_NEGOTIATED = 40208
    SDP_END_POINT_NOT_OFFER_GENERATED = 40209
    SDP_END_POINT_ANSWER_ALREADY_PROCCESED = 40210
    SDP_END_POINT_CANNOT_CREATE_SESSON = 40211
    ICE_GATHER_CANDIDATES_ERROR = 40400
    ICE_ADD_CANDIDATE_ERROR = 40401
    URI_PATH_FILE_NOT_FOUND = 40600

    @property
    def data_type(self) -> str | None:
        """The `data.type` KMS sends with this code (None: KMS sends no `data`)."""
        if self in (ErrorCode.INVALID_REQUEST, ErrorCode.METHOD_NOT_FOUND,
                    ErrorCode.SERVER_ERROR, ErrorCode.INTERNAL_ERROR):
            return None
        return self.name


def dumps(obj: Any) -> str:
    """JSON as KMS writes it: compact, keys sorted, non-ASCII escaped."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


# ---------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class Request:
    id: int | str | None
    method: str
    params: dict[str, Any]


def encode_result(request_id: int | str | None, result: Any) -> str:
    return dumps({"id": request_id, "jsonrpc": "2.0", "result": result})


def encode_error(
    request_id: int | str | None, code: int, message: str, data_type: str | None = None
) -> str:
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data_type is not None:
        error["data"] = {"type": data_type}
    return dumps({"error": error, "id": request_id, "jsonrpc": "2.0"})


def encode_event(object_id: str, event_type: str, data: dict[str, Any]) -> str:
    return dumps({
        "jsonrpc": "2.0",
        "method": "onEvent",
        "params": {"value": {"data": data, "object": object_id, "type": event_type}},
    })


def parse_request(text: str | bytes) -> Request | str:
    """A request, or the exact error reply KMS gives for text that is not one."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return encode_error(None, ErrorCode.PARSE_ERROR, "Parse error.", "PARSE_ERROR")
    return check_request(obj)


def check_request(obj: Any) -> Request | str:
    """Validates one decoded request object (also used for `transaction` operations)."""
    invalid = encode_error(None, ErrorCode.INVALID_REQUEST, "Invalid JSON-RPC request.")
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        return invalid
    request_id = obj.get("id")
    if isinstance(request_id, (list, dict, bool)):
        return invalid
    method = obj.get("method")
    if not isinstance(method, str):
        return invalid
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return encode_error(request_id, ErrorCode.INVALID_PARAMS, "'params' should be an object",
                            "INVALID_PARAMS")
    return Request(id=request_id, method=method, params=params)


# ---------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class Reply:
    """The answer to request `id`: `result`, or `error` (a JSON-RPC error object)."""

    id: int
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Notification:
    """An `onEvent` from the server."""

    object_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)


def encode_operations(operations: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The `operations` of a `transaction`: each op's id is its index, as KMS demands.

    Ops carry no `sessionId`: KMS runs each with the transaction's own.
    """
    ops: list[dict[str, Any]] = []
    for index, (method, params) in enumerate(operations):
        op: dict[str, Any] = {"jsonrpc": "2.0", "id": index, "method": method}
        if params:
            op["params"] = params
        ops.append(op)
    return ops


def transaction_replies(result: Any, count: int) -> list[Reply | None]:
    """One reply per op of a `transaction` result; None for ops after the first failure,
    which KMS never ran."""
    value = result.get("value") if isinstance(result, dict) else None
    if not isinstance(value, list) or len(value) > count:
        raise ProtocolViolation("transaction result without a list of at most one reply per op")
    replies: list[Reply | None] = [None] * count
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or entry.get("id") != index:
            raise ProtocolViolation(f"transaction reply {index} is not the reply to op {index}")
        if "error" in entry:
            error = entry["error"]
            replies[index] = Reply(index, error=error if isinstance(error, dict)
                                   else {"code": -32603, "message": str(error)})
        else:
            replies[index] = Reply(index, result=entry.get("result"))
    return replies


#: Made once: `json.dumps` with options builds a new encoder for every request.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class ClientProtocol:
    """Request ids, session id and reply matching for one client session.

    Ids count up for the life of the protocol object and are never reused, even across
    reconnects that keep the session: KMS caches replies by (session, id) for 20 s.
    """

    def __init__(self, *, first_id: int = 1) -> None:
        self.session_id: str | None = None
        self._next_id = first_id
        self._pending: dict[int, str] = {}
        self._outgoing: list[str] = []
        self._events: deque[Reply | Notification] = deque()

    @property
    def pending(self) -> dict[int, str]:
        """Ids awaiting a reply, with their method names."""
        return dict(self._pending)

    def send_request(self, method: str, params: dict[str, Any] | None = None, *,
                     with_session: bool = True) -> int:
        request_id = self._next_id
        self._next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        params = dict(params or {})
        if with_session and self.session_id is not None and "sessionId" not in params:
            params["sessionId"] = self.session_id
        if params:
            body["params"] = params
        self._pending[request_id] = method
        self._outgoing.append(_ENCODER.encode(body))
        return request_id

    def data_to_send(self) -> list[str]:
        out, self._outgoing = self._outgoing, []
        return out

    def events_received(self) -> list[Reply | Notification]:
        out = list(self._events)
        self._events.clear()
        return out

    def receive_text(self, text: str | bytes) -> None:
        """Parses one frame; raises ProtocolViolation for text that is not JSON-RPC."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolViolation(f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
            raise ProtocolViolation("not a JSON-RPC 2.0 object")
        if obj.get("method") == "onEvent":
            value = (obj.get("params") or {}).get("value")
            if not isinstance(value, dict) or not isinstance(value.get("object"), str) \
                    or not isinstance(value.get("type"), str):
                raise ProtocolViolation("onEvent without value.object/value.type")
            data = value.get("data")
            self._events.append(Notification(value["object"], value["type"],
                                             data if isinstance(data, dict) else {}))
            return
        if "method" in obj:
            log.warning("! unexpected server request %r ignored", obj.get("method"))
            return
        request_id = obj.get("id")
        if not isinstance(request_id, int) or request_id not in self._pending:
            # KMS answers id-less failures with id null; a late reply after a timeout lands here.
            log.warning("! reply to unknown request id %r: %s", request_id,
                        str(obj.get("error") or "")[:200])
            return
        del self._pending[request_id]
        if "error" in obj:
            error = obj["error"]
            self._events.append(Reply(request_id, error=error if isinstance(error, dict)
                                      else {"code": -32603, "message": str(error)}))
            return
        result = obj.get("result")
        if isinstance(result, dict) and isinstance(result.get("sessionId"), str):
            self.session_id = result["sessionId"]
        self._events.append(Reply(request_id, result=result))

    def forget(self, request_id: int) -> None:
        """Stops waiting for `request_id` (it timed out); a late reply is then logged."""
        self._pending.pop(request_id, None)

    def fail_pending(self) -> list[int]:
        """Every pending id, now abandoned (the socket closed)."""
        ids = list(self._pending)
        self._pending.clear()
        return ids
