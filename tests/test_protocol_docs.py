"""docs/protocol.md, the codes clients branch on, and the code that sends them agree, in
both directions: nothing sent goes undocumented, nothing documented is dead."""

from __future__ import annotations

import re
from pathlib import Path

from signaling.call import FailureReason
from signaling.errors import CODES
from signaling.protocol import MESSAGES

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "protocol.md").read_text()

#: Where a client-visible code is written in our sources.
CODE_PATTERNS = (
    r'code="([a-z_.]+)"',  # SignalingError(..., code="…")
    r'\bcode = "([a-z_.]+)"',  # an exception class's default
    r'error\(\s*"([a-z_.]+)"',  # protocol.error("…", …)
    r'problem\(\d+, "([a-z_.]+)"',  # REST problem bodies
    r'"code": "([a-z_.]+)"',  # literal JSON bodies (origin.forbidden)
)
SOURCES = [p for package in ("signaling", "mis", "telemed", "web", "turn", "recordings")
           for p in (ROOT / package).glob("*.py")]


def table(heading: str) -> list[str]:
    """The backticked names in the first column of the table under `heading`."""
    section = DOC.split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def codes_in_sources() -> set[str]:
    used: set[str] = set()
    for path in SOURCES:
        text = path.read_text()
        for pattern in CODE_PATTERNS:
            used |= set(re.findall(pattern, text))
    return used


def server_messages_in_sources() -> set[str]:
    sent: set[str] = set()
    for path in (ROOT / "signaling").glob("*.py"):
        text = path.read_text()
        sent |= set(re.findall(r'encode\(\s*"([a-zA-Z]+)"', text))
        sent |= set(re.findall(r'"(ring[A-Z][a-z]+)"', text))
        sent |= set(re.findall(r'"(media(?:Interrupted|Restored))"', text))
        if path.name == "session.py":  # its replies: `return "<type>", {fields}`
            sent |= set(re.findall(r'return "([a-z]+)", [{a-z]', text))
    return sent


def test_the_table_parser_reads_every_table() -> None:
    """The table reader finds the entries of every table of docs/protocol.md that is checked."""
    assert {"hello", "ping"} <= set(table("## Client messages"))
    assert {"callFailed", "incomingCall"} <= set(table("## Server events"))
    assert "no-media" in table("### Failure reasons (`callFailed.reason`)")
    assert "rate.limited" in table("## Error codes")


def test_the_client_messages_table_lists_exactly_the_messages_parsed() -> None:
    """docs/protocol.md lists each client message the parser accepts, once, and no other."""
    documented = table("## Client messages")
    assert len(documented) == len(set(documented))
    assert sorted(documented) == sorted(MESSAGES)


def test_the_error_codes_table_lists_exactly_the_known_codes() -> None:
    """docs/protocol.md lists each error code in errors.CODES, once, and no other."""
    documented = table("## Error codes")
    assert len(documented) == len(set(documented)), "a code is listed twice"
    assert sorted(set(documented) - set(CODES)) == [], "documented but unknown"
    assert sorted(set(CODES) - set(documented)) == [], "known but undocumented"


def test_every_code_used_is_known_and_every_known_code_is_used() -> None:
    """Every error code the sources send is in errors.CODES, and every code there is sent."""
    used = codes_in_sources()
    assert {"sdp.invalid", "origin.forbidden", "auth.expired", "internal"} <= used, \
        "the patterns above must find the codes in use"
    assert sorted(used - set(CODES)) == [], "sent but not in errors.CODES"
    assert sorted(set(CODES) - used) == [], "in errors.CODES but never sent"


def test_the_failure_reasons_table_lists_exactly_the_reasons() -> None:
    """docs/protocol.md lists exactly the FailureReason values as `callFailed` reasons."""
    assert sorted(table("### Failure reasons (`callFailed.reason`)")) == sorted(
        r.value for r in FailureReason)


def test_every_server_message_is_documented_and_every_documented_event_is_sent() -> None:
    """Every message the server sends is documented, and every documented event is sent."""
    sent = server_messages_in_sources()
    assert {"callLive", "ringTimeout", "mediaInterrupted", "welcome", "pong"} <= sent
    events = set(table("## Server events"))
    messages_section = DOC.split("\n## Client messages\n", 1)[1].split("\n## ", 1)[0]
    replies = {"error", "ok", *re.findall(r"\| `([a-zA-Z]+)` `?\{", messages_section),
               *re.findall(r"\| `([a-zA-Z]+)` \|", messages_section)}
    assert sorted(sent - events - replies) == [], "sent but undocumented"
    assert sorted(events - sent) == [], "documented but never sent"
