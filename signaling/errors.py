"""Errors a client can see, each with a stable code (listed in docs/protocol.md).

    SignalingError            code + message, sent to the client as an `error` message
    ├── AuthError             auth.*: token missing, forged, expired, wrong audience/call
    ├── MessageError          message.*: malformed JSON, unknown type, invalid fields, too large
    ├── CallError             call.* / participant.*: not found, full, ended, not yours
    ├── MediaError            sdp.invalid, candidate.invalid, media.unavailable
    └── ResourceError         turn.exhausted, recording.failed, rate.limited
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CallError",
    "MediaError",
    "MessageError",
    "ResourceError",
    "SignalingError",
]


class SignalingError(Exception):
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class AuthError(SignalingError):
    code = "auth.invalid"


class MessageError(SignalingError):
    code = "message.invalid"


class CallError(SignalingError):
    code = "call.not_found"


class MediaError(SignalingError):
    code = "media.unavailable"


class ResourceError(SignalingError):
    code = "rate.limited"
