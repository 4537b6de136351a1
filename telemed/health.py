"""Health and metrics: `/healthz` (the process answers), `/readyz` (Redis, a media server
and every embedded child answer) and `/metrics` (Prometheus text format)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mis.api import REDIS
from signaling.hub import HUB
from telemed.embedded import Endpoints
from telemed.supervisor import Supervisor

__all__ = ["ENDPOINTS", "HTTP", "SUPERVISOR", "healthz", "metrics", "probe_kurento",
           "probe_redis", "readyz"]

ENDPOINTS = web.AppKey("endpoints", Endpoints)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
HTTP = web.AppKey("http", aiohttp.ClientSession)


async def probe_redis(client: aioredis.Redis, timeout: float = 1.0) -> dict[str, Any]:
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
        return {"up": True}
    except (TimeoutError, OSError, aioredis.RedisError) as exc:
        return {"up": False, "error": type(exc).__name__}


async def probe_kurento(
    session: aiohttp.ClientSession, url: str, timeout: float = 1.0
) -> dict[str, Any]:
    """A JSON-RPC `ping` on a fresh socket: it creates no session on the server."""
    try:
        async with asyncio.timeout(timeout), session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "ping"}))
            reply = json.loads(await ws.receive_str())
        ok = reply.get("result", {}).get("value") == "pong"
        return {"up": ok} if ok else {"up": False, "error": "bad reply"}
    except (TimeoutError, OSError, aiohttp.ClientError, ValueError, TypeError) as exc:
        return {"up": False, "error": type(exc).__name__}


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: TURN pool usage and the embedded children. Counters count
    this node's work; `telemed_turn_leases_in_use` is the whole pool, all nodes together.
    nginx in compose keeps it off the public side."""
    families: list[Metric] = []

    def gauge(name: str, doc: str, value: float) -> None:
        families.append(GaugeMetricFamily(name, doc, value=value))

    def counter(name: str, doc: str, value: float) -> None:
        families.append(CounterMetricFamily(name, doc, value=value))

    turn = request.app[HUB].turn
    if turn is not None:
        gauge("telemed_turn_pool_size", "Most TURN leases out at once.", turn.size)
        # Without Redis the other figures still tell something; /readyz says it is down.
        with contextlib.suppress(aioredis.RedisError, OSError):
            gauge("telemed_turn_leases_in_use", "TURN leases out, all nodes.",
                  await turn.in_use())
        gauge("telemed_turn_leases_held", "TURN leases this node holds.", len(turn.held))
        counter("telemed_turn_leases_issued", "TURN leases handed out.", turn.issued)
        counter("telemed_turn_exhausted", "Joins refused with turn.exhausted.", turn.exhausted)
        counter("telemed_turn_leases_renewed", "TURN leases renewed.", turn.renewed)
    gauge("telemed_calls", "Calls this node holds.", len(request.app[HUB].calls))
    supervisor = request.app.get(SUPERVISOR)
    if supervisor is not None:
        up = GaugeMetricFamily("telemed_child_up", "Embedded child process serving.",
                               labels=["child"])
        starts = CounterMetricFamily("telemed_child_starts", "Times a child was started.",
                                     labels=["child"])
        for name, child in supervisor.children.items():
            up.add_metric([name], 1.0 if child.ready else 0.0)
            starts.add_metric([name], child.starts)
        families += [up, starts]

    class Snapshot(Collector):
        def collect(self) -> Iterable[Metric]:
            return families

    registry = CollectorRegistry()
    registry.register(Snapshot())
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    endpoints = app[ENDPOINTS]
    redis_check = probe_redis(app[REDIS])
    media_checks = [probe_kurento(app[HTTP], url) for url in endpoints.kurento_urls]
    redis_state, *media_states = await asyncio.gather(redis_check, *media_checks)
    media = dict(zip(endpoints.kurento_urls, media_states, strict=True))
    body: dict[str, Any] = {"redis": redis_state, "media_servers": media}
    ready = redis_state["up"] and any(m["up"] for m in media_states)
    supervisor = app.get(SUPERVISOR)
    if supervisor is not None:
        body["children"] = supervisor.status()
        ready = ready and supervisor.all_ready
    body["status"] = "ready" if ready else "not ready"
    return web.json_response(body, status=200 if ready else 503)
