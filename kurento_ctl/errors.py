"""Errors of the Kurento client.

    KurentoError                    every error this package raises
    ├── RpcError                    the server answered with a JSON-RPC error object
    │   ├── InvalidSession          40007: the server does not know our session (restart)
    │   ├── ObjectNotFound          40101/40109: the media object is gone
    │   ├── SdpError                402xx: SDP could not be processed or negotiated
    │   └── ...                     any other code keeps code, message and data.type
    ├── OperationNotRun             a transaction op after the one that failed
    ├── RequestTimeout              no reply within the request timeout
    ├── ConnectionLost              the socket closed while the request was pending
    ├── SessionLost                 the server restarted: every object on it is gone
    └── ProtocolViolation           the server sent something that is not JSON-RPC 2.0
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConnectionLost",
    "InvalidSession",
    "KurentoError",
    "ObjectNotFound",
    "OperationNotRun",
    "ProtocolViolation",
    "RequestTimeout",
    "RpcError",
    "SdpError",
    "SessionLost",
    "rpc_error",
]


class KurentoError(Exception):
    """Base of every error raised by kurento_ctl."""


class RpcError(KurentoError):
    #: Inside a transaction: which op failed, e.g. "op 7 invoke processOffer".
    operation: str | None = None

    def __init__(self, code: int, message: str, data_type: str | None = None,
                 data: Any = None) -> None:
        super().__init__(f"{code} {data_type or ''} {message}".replace("  ", " "))
        self.code = code
        self.message = message
        self.data_type = data_type
        self.data = data


class InvalidSession(RpcError):
    pass


class ObjectNotFound(RpcError):
    pass


class SdpError(RpcError):
    pass


class OperationNotRun(KurentoError):
    """KMS stops a transaction at its first failing op; the ops after it never ran."""


class RequestTimeout(KurentoError):
    pass


class ConnectionLost(KurentoError):
    pass


class SessionLost(KurentoError):
    pass


class ProtocolViolation(KurentoError):
    pass


def rpc_error(error: Any) -> RpcError:
    """The typed exception for a JSON-RPC `error` member."""
    if not isinstance(error, dict):
        return RpcError(-32603, f"malformed error object: {error!r}")
    code = error.get("code")
    code = code if isinstance(code, int) else -32603
    message = str(error.get("message", ""))
    data = error.get("data")
    data_type = data.get("type") if isinstance(data, dict) else None
    cls: type[RpcError] = RpcError
    if code == 40007:
        cls = InvalidSession
    elif code in (40101, 40109):
        cls = ObjectNotFound
    elif 40200 <= code < 40300:
        cls = SdpError
    return cls(code, message, data_type if isinstance(data_type, str) else None, data)
