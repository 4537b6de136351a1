"""Soak: many short recorded 2-party calls one after another, and what is left behind.

The embedded media server runs as its own process; the signalling service (with real
Redis and coturn) and both aiortc participants run in this one, so "service RSS" includes
the peers'. Every `--every` calls (and after the first, which warms caches up) it samples:
RSS and open fds of both processes, pipelines alive on the media server, TURN leases out,
Redis keys (per-call history apart from the rest), asyncio tasks and timers, and the hub's
live state. Flat means: after the warm-up, memory grows less than the bound below, and
everything else comes back to where it was after every call.

Per call, by design and bounded: one history entry, one recordings entry and one webhook
log per call in Redis (kept for history/retention), and the hub keeps a finished call for
`finished_linger` (300 s) with one timer each, so those are reported apart.

    python -m bench.soak [--calls 1000] [--every 100] [--seconds 0.5]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import args, raise_nofile, report, rss_kib
from kurento_ctl.client import KurentoClient
from mis.api import REDIS
from mis.history import SINK
from recordings.worker import DONE_KEPT
from signaling.call import CallKind
from signaling.hub import Hub
from telemed.app import RECORDINGS
from tests.hub_fixtures import CallClient, Service, run_service
from tests.media_fixtures import mediaserver_process
from tests.services import free_port, run_redis, run_turnserver

#: RSS either process may gain between the first sample after warm-up and the last.
RSS_BOUND_MIB = 40.0
#: Per-call Redis keys kept by design (history, recordings metadata, webhook logs, and a
#: finished call's owner record, which fences late writers for a day and then expires).
PER_CALL_PREFIXES = ("telemed:calls:", "telemed:recordings:", "telemed:webhooks:",
                     "telemed:owner:")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def one_call(service: Service, seconds: float) -> str:
    call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                          ("d", "D", "doctor")])
    a = CallClient(service, service.token(call.id, "p"))
    b = CallClient(service, service.token(call.id, "d", role="doctor"))
    try:
        await asyncio.gather(a.connect(), b.connect())
        # One after the other: simultaneous joins hit the join race of issue #20 (the
        # hub's owner fixes it), which is not what this measures.
        await a.join()
        await b.join()
        await asyncio.gather(a.publish(), b.publish())
        await asyncio.gather(a.subscribe("d"), b.subscribe("p"))
        await asyncio.gather(a.wait_event("callLive"), b.wait_event("callLive"))
        await asyncio.sleep(seconds)  # media to record: the length of the call is the point
        await b.request("end")
    finally:
        await asyncio.gather(a.close(), b.close())
    return call.id


async def redis_keys(service: Service) -> tuple[int, int]:
    """(per-call history keys, every other key)."""
    per_call = other = 0
    async for key in service.app[REDIS].scan_iter(count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        if text.startswith(PER_CALL_PREFIXES):
            per_call += 1
        else:
            other += 1
    return per_call, other


async def sample(service: Service, kms_pid: int, kurento: KurentoClient, done: int
                 ) -> dict[str, Any]:
    hub: Hub = service.hub
    await service.app[SINK].settle()
    gc.collect()
    pipelines = await kurento.request("invoke", {"object": "manager_ServerManager",
                                                 "operation": "getPipelines"})
    per_call, other = await redis_keys(service)
    loop = asyncio.get_running_loop()
    # No public count exists; cancelled handles stay in the heap until asyncio purges them.
    timers = sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]
    lingering = len(hub.teardown.evictions)
    assert hub.turn is not None
    return {
        "calls": done,
        "service_rss_mib": rss_kib(os.getpid()) / 1024,
        "mediaserver_rss_mib": rss_kib(kms_pid) / 1024,
        "service_fds": fds(os.getpid()), "mediaserver_fds": fds(kms_pid),
        "pipelines": len(pipelines.get("value", pipelines) if isinstance(pipelines, dict)
                         else pipelines),
        "turn_leases": await hub.turn.in_use(),
        "redis_keys_history": per_call, "redis_keys_other": other,
        "tasks": len(asyncio.all_tasks()), "timers_other": timers - lingering,
        "lingering_calls": lingering, "hub_runtime": len(hub.sessions),
        "hub_online": len(hub.presence.online), "hub_rings": len(hub.referrals.ringing.rings),
        "recording_jobs_remembered": len(service.app[RECORDINGS].done),
    }


async def soak(calls: int, every: int, seconds: float, tmp: Path) -> list[dict[str, Any]]:
    raise_nofile()
    samples: list[dict[str, Any]] = []
    port = free_port()
    rec = tmp / "recordings"
    rec.mkdir()
    with run_redis(tmp / "redis") as redis, run_turnserver(tmp / "turn") as turn:
        async with mediaserver_process(port, rec) as kms, run_service(
                tmp, redis.url, (f"ws://127.0.0.1:{port}/kurento",), watchdog_timeout=60.0,
                turn_urls=(turn.url,), turn_secrets=(turn.secret,),
                env={"TELEMED_RECORDINGS_DIR": str(rec)}) as service:
            kurento = KurentoClient(f"ws://127.0.0.1:{port}/kurento")
            await kurento.connect()
            try:
                started = time.perf_counter()
                worker = service.app[RECORDINGS]
                for done in range(1, calls + 1):
                    call_id = await one_call(service, seconds)
                    # Finalized before the next call: a backlog would look like a leak.
                    await asyncio.wait_for(worker.wait(call_id), 120)
                    if done == 1 or done % every == 0 or done == calls:
                        samples.append(await sample(service, kms.pid, kurento, done))
                        samples[-1]["elapsed_s"] = time.perf_counter() - started
                        print("  " + " ".join(f"{k}={v:.1f}" if isinstance(v, float)
                                              else f"{k}={v}" for k, v in samples[-1].items()),
                              flush=True)
            finally:
                await kurento.close()
    return samples


def verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures, and whether each is flat: what must come back to its first value,
    and memory within the bound after the warm-up sample."""
    first, last = samples[0], samples[-1]
    warm = samples[1] if len(samples) > 2 else first
    leaked = {k: last[k] for k in ("pipelines", "turn_leases", "hub_runtime", "hub_online",
                                   "hub_rings") if last[k]}
    grown = {k: last[k] - first[k] for k in ("service_fds", "mediaserver_fds",
                                              "redis_keys_other", "tasks", "timers_other")
             if last[k] > first[k] + 3}
    if last["recording_jobs_remembered"] > DONE_KEPT:
        grown["recording_jobs_remembered"] = last["recording_jobs_remembered"]
    rss = {k: last[k] - warm[k] for k in ("service_rss_mib", "mediaserver_rss_mib")}
    return {
        "calls": last["calls"], "seconds_per_call": last["elapsed_s"] / last["calls"],
        "service_rss_first_mib": first["service_rss_mib"],
        "service_rss_last_mib": last["service_rss_mib"],
        "service_rss_growth_after_warmup_mib": rss["service_rss_mib"],
        "mediaserver_rss_first_mib": first["mediaserver_rss_mib"],
        "mediaserver_rss_last_mib": last["mediaserver_rss_mib"],
        "mediaserver_rss_growth_after_warmup_mib": rss["mediaserver_rss_mib"],
        "redis_keys_history_per_call": last["redis_keys_history"] / last["calls"],
        "leaked_objects": sum(leaked.values()), "grown_counters": sum(grown.values()),
        "flat": int(not leaked and not grown and all(v < RSS_BOUND_MIB
                                                     for v in rss.values())),
        "detail": {"leaked": leaked, "grown": grown},
    }


def main() -> None:
    opts = args(__doc__ or "", calls=1000, every=100, seconds=0.5)
    if opts.smoke:
        opts.calls, opts.every = 4, 2
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        samples = asyncio.run(soak(opts.calls, opts.every, opts.seconds, Path(tmp)))
    figures = verdict(samples)
    detail = figures.pop("detail")
    report("soak", figures)
    if not figures["flat"]:
        print(f"NOT FLAT: {detail}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
