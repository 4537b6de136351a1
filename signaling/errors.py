"""Errors a client can see, each with a stable code (listed in docs/protocol.md).

    SignalingError            code + message, sent to the client as an `error` message
    ├── AuthError             auth.*: token missing, forged, expired, wrong audience/call
    ├── MessageError          message.*: malformed JSON, unknown type, invalid fields, too large
    ├── CallError             call.* / participant.*: not found, full, ended, not yours
    ├── MediaError            sdp.invalid, candidate.invalid, media.unavailable,
    │                         turn.unusable
    └── ResourceError         turn.exhausted, rate.limited, candidate.too_many
"""

from __future__ import annotations

__all__ = [
    "CODES",
    "AuthError",
    "CallElsewhere",
    "CallError",
    "MediaError",
    "MessageError",
    "ResourceError",
    "SignalingError",
]


#: Every code a client or the MIS can receive, and what it means. Stable: clients branch on
#: them. docs/protocol.md and docs/api.md list them; a test keeps this, the code and the
#: docs in step.
CODES: dict[str, str] = {
    "origin.forbidden": "HTTP 403 on the WebSocket upgrade: the page's Origin is not allowed",
    "auth.required": "send `hello` with a join token first",
    "auth.invalid": "token (or API key) malformed, forged, from an unknown issuer or incomplete",
    "auth.expired": "token expired",
    "auth.audience": "token made for another service",
    "auth.wrong_call": "token opens another call than the one this connection is in",
    "message.malformed": "not a JSON object, or a binary frame",
    "message.unknown_type": "no such message type",
    "message.invalid": "a field is missing or has the wrong type, or the message breaks a "
                       "limit (nesting, NaN, lone surrogate, id); the message names it",
    "message.too_large": "message above http.max_frame_bytes",
    "rate.limited": "too many messages; the connection closes if it goes on",
    "call.not_found": "no such call (or not one you are in)",
    "call.not_yours": "the token's subject is not a participant of the call",
    "call.ended": "the call is over",
    "call.removed": "the MIS removed this participant from the call",
    "recording.disk_full": "REST: the recordings volume is below recordings.min_free_bytes; "
                           "no call is created",
    "recording.not_found": "REST: no such recording (or file of it)",
    "call.full": "the call has its maximum of participants",
    "call.not_joined": "`join` first",
    "call.already_joined": "this connection already joined",
    "call.not_allowed": "your role may not do that (patients do not end calls or ring)",
    "call.not_referral": "only referrals ring",
    "call.not_ringing": "nothing is ringing for you (or you are not ringing anyone)",
    "call.not_accepted": "a consultant joins a referral only after accepting it",
    "call.state": "the call is not in a state that allows this",
    "participant.not_found": "no such participant in this call",
    "participant.offline": "the participant to ring has no connection open",
    "sdp.invalid": "the SDP cannot be parsed, offers no usable media, or was already sent",
    "candidate.invalid": "the ICE candidate cannot be parsed (RFC 8445 grammar)",
    "candidate.too_many": "more early candidates (before their publish/subscribe) than the "
                          "per-participant cap",
    "media.unavailable": "no media server can take the call, or it failed the request",
    "turn.exhausted": "no TURN credentials are left in the pool",
    "turn.unusable": "`publish`/`subscribe` refused: your TURN credentials cannot be handed "
                     "to the media server (Kurento would mis-read them: a ':' in the "
                     "password); a configuration problem, the log says which; the call goes "
                     "on",
    "request.invalid": "REST: a field of the request is invalid; `field` names it",
    "request.too_large": "REST: the request body is above 64 KiB",
    "request.not_found": "REST: no such API route",
    "request.method_not_allowed": "REST: the route does not take this method (`Allow` "
                                  "lists those it takes)",
    "request.conflict": "REST: the Idempotency-Key was used with a different request",
    "event.not_found": "REST: no such webhook event",
    "service.unavailable": "the service's shared state (Redis) is not answering; retry "
                           "shortly (REST: after the Retry-After header's seconds)",
    "internal": "a bug on our side; the call goes on and the log has the details",
}


class SignalingError(Exception):
    code = "internal"
    #: The `id` of the request at fault, when it could be read.
    request_id: str | int | None = None

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


class CallElsewhere(Exception):
    """The call runs on another signalling node: its sockets are relayed there. Never
    reaches a client (the node holding the socket carries it to `node`)."""

    def __init__(self, node: str) -> None:
        super().__init__(f"the call runs on node {node}")
        self.node = node
