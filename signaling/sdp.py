"""What an SDP offer asks for, read with aiortc's parser (no hand-written grammar)."""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from signaling.errors import MediaError

__all__ = ["offer_kinds"]


def offer_kinds(sdp: str, wanted: str = "send") -> frozenset[str]:
    """Media kinds an offer sends (or receives), from aiortc's SDP parser."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        # The parser takes untrusted text and fails on it in any way it likes: truncated
        # lines raise AssertionError ("m=audio"), StopIteration ("a=rtpm"), KeyError
        # ("a=setup:"), besides ValueError and IndexError. Each is the offer's fault.
        raise MediaError(f"invalid SDP: {type(exc).__name__} {exc}"[:200],
                         code="sdp.invalid") from None
    kinds = {m.kind for m in parsed.media
             if m.kind in ("audio", "video") and m.port != 0
             and wanted in (m.direction or "sendrecv")}
    if not kinds:
        raise MediaError(f"the offer {wanted}s neither audio nor video", code="sdp.invalid")
    return frozenset(kinds)
