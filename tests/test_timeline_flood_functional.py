"""A patient's socket flooding `clientEvent`s: the call's history stays capped, in memory
and in Redis, and `GET /calls/{id}` stays a bounded page (docs/api.md, "Timeline")."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import aiohttp

from mis.paging import PAGE_DEFAULT
from signaling.call import CallKind
from signaling.protocol import SUBPROTOCOL
from signaling.timeline import CLIENT_EVENT_CAP, CLIENT_EVENTS_CAPPED, TIMELINE_LIMIT
from tests.helpers import within
from tests.hub_fixtures import API_KEY, run_service
from tests.services import RedisServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FLOOD = 10_000
#: Growth of this process's RSS (service and flooding client both live in it) allowed for
#: the flood, documented in docs/benchmarks.md. What is kept is at most CLIENT_EVENT_CAP
#: entries of ~1 KiB; the rest is the allocator's slack.
FLOOD_RSS_BOUND_MIB = 24.0
#: A page of PAGE_DEFAULT entries of ~1 KiB, with the call's summary.
PAGE_BYTES_BOUND = 320 * 1024


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def diagnostic(i: int) -> str:
    """A browser's stats report of about 1 KiB, no id: no reply is sent for it."""
    return json.dumps({"type": "clientEvent", "event": "stats",
                       "data": {"n": i, "target": "publish", "report": "r" * 1000}})


async def flood(ws: aiohttp.ClientWebSocketResponse, first: int, count: int) -> None:
    """`count` diagnostics, then one with an id whose `ok` says all were handled."""
    for i in range(first, first + count):
        await ws.send_str(diagnostic(i))
    await ws.send_str(json.dumps({"type": "clientEvent", "id": first + count,
                                  "event": "done", "data": {}}))
    async for msg in ws:
        body = json.loads(msg.data)
        assert body["type"] == "ok", body
        if body.get("re") == first + count:
            return
    raise AssertionError("the socket closed during the flood")


async def test_a_client_event_flood_keeps_the_history_capped_and_its_read_small(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """10,000 clientEvents from one socket: bounded RSS growth, capped timeline in memory and
    Redis, the overflow counted, and GET /calls/{id} a bounded page live and from history."""
    env = {"TELEMED_HTTP_WS_RATE": "1000000", "TELEMED_HTTP_WS_BURST": "1000000"}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env) as service, aiohttp.ClientSession() as http:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        ws = await http.ws_connect(service.ws_url, protocols=[SUBPROTOCOL],
                                   headers={"Origin": service.url})
        await ws.send_str(json.dumps({"type": "hello", "id": 0,
                                      "token": service.token(call.id, "pat-1")}))
        assert (await within(ws.receive_json(), 10, "welcome"))["type"] == "welcome"
        # Warm-up past the cap: buffers, caches and the cap's own entry exist before the
        # baseline, so what the flood adds is what it would add for ever.
        await within(flood(ws, 1, CLIENT_EVENT_CAP + 100), 60, "warm-up")
        await service.app_sink_settled()
        gc.collect()
        before = rss_mib()
        await within(flood(ws, 10_000, FLOOD), 120, "flood")
        await service.app_sink_settled()
        gc.collect()
        grown = rss_mib() - before
        assert grown < FLOOD_RSS_BOUND_MIB, f"RSS grew {grown:.1f} MiB"

        kept = [e for e in call.timeline.as_list() if e["event"].startswith("client.")]
        assert len(kept) == CLIENT_EVENT_CAP
        assert [e["data"]["n"] for e in kept[:2]] == [1, 2]  # the first ones are kept
        assert [e["event"] for e in call.timeline.as_list()].count(CLIENT_EVENTS_CAPPED) == 1
        # Everything past the cap is counted: the warm-up's overflow, the flood, two `done`s.
        dropped = 100 + FLOOD + 2
        assert call.timeline.client_dropped == dropped

        key = f"telemed:calls:{call.id}"
        stored = await redis_client.llen(f"{key}:timeline")
        assert stored == call.timeline.seq <= TIMELINE_LIMIT
        assert int(await redis_client.get(f"{key}:seq")) == call.timeline.seq
        # The summary no longer carries the timeline: it stays a few KiB however long that is.
        assert len(await redis_client.get(key)) < 4096

        async def read(query: str = "") -> tuple[int, dict[str, Any]]:
            async with http.get(f"{service.url}/api/v1/calls/{call.id}{query}",
                                headers=AUTH) as r:
                assert r.status == 200
                raw = await r.read()
                return len(raw), json.loads(raw)

        size, live = await read()
        assert size < PAGE_BYTES_BOUND and len(live["timeline"]) == PAGE_DEFAULT
        assert live["timelinePage"] == {"from": 0, "next": PAGE_DEFAULT,
                                        "total": call.timeline.seq,
                                        "clientEventsDropped": dropped}
        # Page by page the whole timeline comes back once, in order.
        seen: list[dict[str, Any]] = []
        at: int | None = 0
        while at is not None:
            _, page = await read(f"?timelineFrom={at}&timelineLimit=150")
            assert page["timelinePage"]["from"] == at
            seen += page["timeline"]
            at = page["timelinePage"]["next"]
        assert seen == call.timeline.as_list()

        await service.hub.end(call.id)
        await service.app_sink_settled()
        service.hub.calls.pop(call.id)  # only the history knows it now
        size, stored_page = await read("?timelineFrom=400&timelineLimit=300")
        assert size < PAGE_BYTES_BOUND * 2
        assert stored_page["state"] == "ended"
        assert stored_page["timeline"] == call.timeline.as_list()[400:700]
        assert stored_page["timelinePage"]["clientEventsDropped"] == dropped
        await ws.close()
