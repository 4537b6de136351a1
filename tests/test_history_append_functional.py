"""The call history on a real Redis: timelines are appended, once per entry, by whichever
process holds the call, and read back after a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mis.history import CallStore, EventSink
from signaling.call import Call, CallKind


async def test_a_replayed_journal_appends_each_entry_once(
    tmp_path: Path, redis_client: Any
) -> None:
    """Journal lines replayed after Redis already took them add no entry twice."""
    journal = tmp_path / "call-events.journal"
    sink = EventSink(CallStore(redis_client), None, journal=journal)
    sink.start()
    call = Call(kind=CallKind.CONSULTATION)
    sink("call.created", call, {})
    call.timeline.add("client.stats", participant="p", n=1)
    sink("call.ended", call, {})
    lines = journal.read_text()
    await sink.flush()
    # A crash after Redis took them but before the journal was emptied.
    journal.write_text(lines)
    again = EventSink(CallStore(redis_client), None, journal=journal)
    assert again.replay() == 2
    again.start()
    await again.flush()
    stored = await CallStore(redis_client).get(call.id)
    assert stored is not None
    assert stored["timeline"] == call.timeline.as_list()
    assert stored["timelineSeq"] == call.timeline.seq == 2


async def test_entries_between_events_reach_redis_in_one_loop_turn(redis_client: Any) -> None:
    """Client diagnostics added after the call's last event are in Redis once the sink
    settles, without any further call event."""
    sink = EventSink(CallStore(redis_client), None)
    sink.start()
    call = Call(kind=CallKind.CONSULTATION)
    sink("call.created", call, {})
    for i in range(50):
        call.timeline.add("client.stats", participant="p", n=i)
    await sink.settle()
    stored = await CallStore(redis_client).get(call.id)
    assert stored is not None and [e.get("n") for e in stored["timeline"][1:]] == list(range(50))
    await sink.flush()


async def test_another_process_goes_on_with_a_call_where_the_first_stopped(
    redis_client: Any
) -> None:
    """A call restored from Redis by a second process numbers on from the stored entries:
    the history holds the first process's entries then the second's, none twice."""
    first = EventSink(CallStore(redis_client), None)
    first.start()
    call = Call(kind=CallKind.CONSULTATION)
    call.add_participant("p", "P", "patient")
    first("call.created", call, {})
    call.timeline.add("client.x", participant="p")
    await first.flush()

    stored = await CallStore(redis_client).get(call.id)
    assert stored is not None
    taken = Call.from_snapshot(stored)
    second = EventSink(CallStore(redis_client), None)
    second.start()
    taken.timeline.add("client.y", participant="p")
    second("participant.left", taken, {"participant": "p"})
    await second.flush()
    again = await CallStore(redis_client).get(call.id)
    assert again is not None
    assert [e["event"] for e in again["timeline"]] == [
        "state", "client.x", "restored", "client.y"]
    assert again["timelineSeq"] == 4


async def test_a_history_written_before_timelines_were_lists_is_read_and_carried_on(
    redis_client: Any
) -> None:
    """A summary that holds its whole timeline (the old form) reads back with it, and a
    process going on with that call writes it out as a list, followed by the new entries."""
    old = {"id": "c0ffee", "kind": "consultation", "state": "created", "failure": None,
           "failureDetail": None, "mediaServer": None, "createdAt": 1.0, "metadata": {},
           "schedule": None, "maxParticipants": 2,
           "participants": [{"id": "p", "name": "P", "role": "patient", "state": "invited",
                             "published": []}],
           "timeline": [{"at": 1.0, "event": "state", "state": "created"},
                        {"at": 2.0, "event": "client.x", "participant": "p"}]}
    await redis_client.set("telemed:calls:c0ffee", json.dumps(old))
    store = CallStore(redis_client)
    stored = await store.get("c0ffee")
    assert stored is not None and stored["timeline"] == old["timeline"]
    page = await store.get("c0ffee", start=1, limit=5)
    assert page is not None and page["timeline"] == old["timeline"][1:]
    call = Call.from_snapshot(stored)
    sink = EventSink(store, None)
    sink.start()
    sink("call.ended", call, {})
    await sink.flush()
    after = await store.get("c0ffee")
    assert after is not None
    assert [e["event"] for e in after["timeline"]] == ["state", "client.x", "restored"]
    assert after["timeline"][:2] == old["timeline"] and after["timelineSeq"] == 3
    assert "timeline" not in json.loads(await redis_client.get("telemed:calls:c0ffee"))


async def test_a_call_left_live_by_a_dead_process_is_closed_with_one_more_entry(
    redis_client: Any
) -> None:
    """At start-up a call a previous process left live gets one `failed` entry after its
    stored ones, numbered on; the summary says failed/shutdown; nothing internal leaks."""
    sink = EventSink(CallStore(redis_client), None)
    sink.start()
    call = Call(kind=CallKind.CONSULTATION)
    call.add_participant("p", "P", "patient")
    sink("call.created", call, {})
    call.timeline.add("client.x", participant="p")
    await sink.flush()
    store = CallStore(redis_client)
    (closed,) = await store.close_unfinished("the service restarted", now=99.0)
    assert closed["state"] == "failed" and closed["failure"] == "shutdown"
    assert not {"timelineSeq", "timelineFrom", "timelineEnd"} & closed.keys()
    stored = await store.get(call.id)
    assert stored is not None and stored["state"] == "failed"
    assert [e["event"] for e in stored["timeline"]] == ["state", "client.x", "state"]
    assert stored["timeline"][-1] == {"at": 99.0, "event": "state", "state": "failed",
                                      "reason": "shutdown", "detail": "the service restarted"}
    assert stored["timelineSeq"] == 3
    assert await store.close_unfinished("again") == []  # no longer open
