"""`Timeline`: numbered entries, the cap on client diagnostics, restore and paging."""

from __future__ import annotations

from signaling.call import Call, CallKind, CallState
from signaling.timeline import CLIENT_EVENTS_CAPPED, Timeline


def test_client_diagnostics_past_the_cap_are_counted_not_kept() -> None:
    """Past `client_limit` client.* entries are dropped and counted, one marker entry says
    so, and the call's own entries are still kept."""
    timeline = Timeline(client_limit=3)
    for i in range(10):
        timeline.add("client.stats", participant="p", n=i)
    timeline.add("state", state="live")
    events = [e["event"] for e in timeline.as_list()]
    assert events == ["client.stats"] * 3 + [CLIENT_EVENTS_CAPPED, "state"]
    assert timeline.client_dropped == 7 and timeline.seq == 5
    assert timeline.as_list()[3]["participant"] == "p"


def test_unwritten_entries_are_handed_once_in_order_with_their_numbers() -> None:
    """`take_unwritten` gives each entry once, numbered from where the last take stopped."""
    timeline = Timeline()
    timeline.add("a")
    timeline.add("b")
    assert [(n, [e["event"] for e in es]) for n, es in [timeline.take_unwritten()]] == [
        (0, ["a", "b"])]
    timeline.add("c")
    first, entries = timeline.take_unwritten()
    assert (first, [e["event"] for e in entries]) == (2, ["c"])
    assert timeline.take_unwritten() == (3, [])


def test_the_summary_survives_its_entries_leaving_memory() -> None:
    """When the call went live and who joined stay known after those entries are dropped."""
    call = Call(kind=CallKind.CONSULTATION)
    call.timeline.limit = 4
    call.timeline.add("joined", participant="p")
    call.transition(CallState.CONNECTING)
    call.transition(CallState.LIVE, now=123.0)
    for i in range(10):
        call.timeline.add("x", i=i)
    assert "live" not in [e.get("state") for e in call.timeline.as_list()]
    assert call.timeline.states["live"] == 123.0
    assert [j["participant"] for j in call.timeline.joins] == ["p"]


def test_a_restored_timeline_numbers_on_from_the_stored_one() -> None:
    """Restored from 3 stored entries ending at number 50: the next entry is 50 and only it
    is unwritten; a history without numbers (0) is written again from 0."""
    stored = [{"at": 1.0, "event": "state", "state": "created"},
              {"at": 2.0, "event": "client.x", "participant": "p"},
              {"at": 3.0, "event": "joined", "participant": "p"}]
    timeline = Timeline()
    timeline.restore(stored, 50, client_dropped=4)
    timeline.add("restored")
    first, entries = timeline.take_unwritten()
    assert (first, [e["event"] for e in entries]) == (50, ["restored"])
    assert (timeline.client_events, timeline.client_dropped) == (1, 4)
    assert timeline.states == {"created": 1.0}

    legacy = Timeline()
    legacy.restore(stored, 0)
    legacy.add("restored")
    assert legacy.take_unwritten()[0] == 0 and legacy.seq == 4


def test_pages_start_at_the_number_asked_within_what_is_kept() -> None:
    """A page starts at the number asked (the oldest kept when older or None) and holds at
    most `limit` entries."""
    timeline = Timeline(limit=5)
    for i in range(8):
        timeline.add("x", i=i)
    assert timeline.page(None, 2) == (3, timeline.as_list()[:2])
    assert timeline.page(0, 2)[0] == 3
    first, entries = timeline.page(6, 10)
    assert (first, [e["i"] for e in entries]) == (6, [6, 7])
    assert timeline.page(99, 10) == (8, [])
