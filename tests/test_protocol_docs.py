"""docs/protocol.md, the codes clients branch on, and the code that sends them agree."""

from __future__ import annotations

import re
from pathlib import Path

from signaling.errors import CODES
from signaling.protocol import MESSAGES

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "protocol.md").read_text()


def documented(name: str) -> bool:
    return f"`{name}`" in DOC


def test_every_client_message_is_documented() -> None:
    assert [t for t in MESSAGES if not documented(t)] == []


def test_every_error_code_is_documented_and_every_code_used_is_known() -> None:
    assert [c for c in CODES if not documented(c)] == []
    used = set()
    for path in [*(ROOT / "signaling").glob("*.py"), *(ROOT / "turn").glob("*.py")]:
        used |= set(re.findall(r'code="([a-z_.]+)"', path.read_text()))
        used |= set(re.findall(r'error\(\s*"([a-z_.]+)"', path.read_text()))
        used |= set(re.findall(r'problem\(\d+, "([a-z_.]+)"', path.read_text()))
    assert used, "the patterns above must find the codes in use"
    assert sorted(used - set(CODES)) == []


def test_every_server_event_is_documented() -> None:
    events = set()
    for path in (ROOT / "signaling").glob("*.py"):
        text = path.read_text()
        events |= set(re.findall(r'encode\("([a-zA-Z]+)"', text))
        events |= set(re.findall(r'"(ring[A-Z][a-z]+)"', text))
        events |= set(re.findall(r'"(media(?:Interrupted|Restored))"', text))
    assert {"callLive", "ringTimeout", "mediaInterrupted"} <= events
    assert sorted(e for e in events if not documented(e)) == []
