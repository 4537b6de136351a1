"""Watchdog precision: N real two-party calls whose media never flows start together; how
far from the configured timeout do they fail, teardown included?

The hub runs in its own process with `--timeout` as its watchdog timeout. A load process
holds both participants of every call and plays the media server (a scripted JSON-RPC
server that answers at once and never reports media flowing). All participants join, then
all publish at once; a call's watchdog is armed when its first offer is answered, which
happens between the media server's last request of that publish (`gatherCandidates`) and
the participant receiving the answer; lateness is measured from the first (an upper
bound) and, as `..._vs_answer`, from the second (a lower bound). For each call: `failed`
is when its first participant hears `callFailed`, `released` is when the media server is
asked to release its pipeline — the end of the teardown, after `stopAndWait` of both
recorders.

Baselines, in this process: the same number of `MediaWatchdog` timers alone, and of bare
`loop.call_later` timers, armed together.

`--profile` runs cProfile in the hub from the moment every watchdog is armed until the
last release, and prints where its CPU went (the figures then include the profiler's cost).

    python -m bench.watchdog [--calls 200] [--timeout 3.0] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Child, bench_main, pct, serve_commands
from bench.common import tokens as read_tokens
from bench.scripted_kms import OFFER, ScriptedKms, run_scripted_kms
from signaling.watchdog import Expectation, MediaWatchdog, WatchdogTimer

clock = time.perf_counter


class Load:
    def __init__(self, kms: ScriptedKms) -> None:
        kms.on_request = self._on_request
        self.call_of_pipeline: dict[str, int] = {}
        self.released: dict[int, float] = {}
        self.stops = 0
        self.armed: dict[int, float] = {}  # first answer received by a participant
        self.negotiated: dict[int, float] = {}  # first publish's last media-server request
        self.failed: dict[int, float] = {}
        self.reasons: Counter[str] = Counter()
        self.all_failed = asyncio.Event()
        self.all_released = asyncio.Event()
        self.calls = 0
        self.timeout = 0.0
        self.published = 0.0
        self.http: aiohttp.ClientSession | None = None
        self.sockets: list[tuple[aiohttp.ClientWebSocketResponse, Any]] = []

    def _on_request(self, method: str, params: dict[str, Any], now: float) -> None:
        target = str(params.get("object", ""))
        if method == "invoke" and params.get("operation") == "processOffer":
            # The offer's session id names the call (see `publish`).
            call = int(params["operationParams"]["offer"].split("o=- ", 1)[1].split(" ")[0])
            self.call_of_pipeline[target.split("/")[0]] = call
        elif method == "invoke" and params.get("operation") == "gatherCandidates":
            # The hub's last request before it answers the offer and arms the watchdog.
            call = self.call_of_pipeline.get(target.split("/")[0])
            if call is not None:
                self.negotiated.setdefault(call, now)
        elif method == "invoke" and params.get("operation") == "stopAndWait":
            self.stops += 1
        elif method == "release" and target in self.call_of_pipeline:
            self.released.setdefault(self.call_of_pipeline[target], now)
            if len(self.released) == self.calls:
                self.all_released.set()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, call: int,
                    replies: dict[int, asyncio.Future[dict[str, Any]]]) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            if (waiter := replies.pop(body.get("re", -1), None)) is not None:
                waiter.set_result(body)
            elif body.get("type") == "callFailed" and call not in self.failed:
                self.failed[call] = clock()
                self.reasons[body.get("reason", "?")] += 1
                if len(self.failed) == self.calls:
                    self.all_failed.set()

    async def publish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every participant joins, then all publish at once; returns when all answers
        are in (the watchdogs are armed)."""
        self.calls = body["calls"]
        self.timeout = body["timeout"]
        tokens = read_tokens(body["tokens"], 2 * self.calls)
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(50)
        self.http = http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def joined(i: int) -> tuple[aiohttp.ClientWebSocketResponse, Any]:
            async with gate:
                ws = await http.ws_connect(body["url"], protocols=["telemed.v1"],
                                           headers={"Origin": body["origin"]})
                replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
                reader = asyncio.create_task(self._read(ws, i // 2, replies))
                for n, (kind, fields) in enumerate(
                        [("hello", {"token": tokens[i]}), ("join", {})]):
                    replies[n] = loop.create_future()
                    await ws.send_str(json.dumps({"type": kind, "id": n, **fields}))
                    if (await replies[n])["type"] == "error":
                        raise RuntimeError(f"{kind} refused")
                return ws, (reader, replies)

        sockets = await asyncio.gather(*(joined(i) for i in range(2 * self.calls)))

        async def publish(i: int) -> None:
            ws, (_, replies) = sockets[i]
            replies[2] = loop.create_future()
            sdp = OFFER.replace("o=- 1 ", f"o=- {i // 2} ")
            await ws.send_str(json.dumps({"type": "publish", "id": 2, "sdp": sdp}))
            if (await replies[2])["type"] != "answer":
                raise RuntimeError("publish refused")
            self.armed.setdefault(i // 2, clock())

        start = clock()
        await asyncio.gather(*(publish(i) for i in range(2 * self.calls)))
        self.published = clock() - start
        self.sockets = sockets
        return {"ok": True}

    async def collect(self, body: dict[str, Any]) -> dict[str, Any]:
        """Waits for every call to fail and be released; the figures. `deadlines` are the
        hub's own watchdog deadlines per call, read after `publish`."""
        await asyncio.wait_for(self.all_failed.wait(), self.timeout + 60)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_released.wait(), 10)
        for ws, (reader, _) in self.sockets:
            await ws.close()
            reader.cancel()
        if self.http is not None:
            await self.http.close()
        timeout, published = self.timeout, self.published
        deadlines = body["deadlines"]
        # When the hub said the call must fail: the lateness it is answerable for.
        exact = [(self.failed[c] - deadlines[c]) * 1000 for c in self.failed
                 if deadlines[c] is not None]
        # The hub arms between these two moments: lateness past the first is an upper
        # bound, past the second a lower one.
        late = [(self.failed[c] - self.negotiated[c] - timeout) * 1000 for c in self.failed]
        low = [(self.failed[c] - self.armed[c] - timeout) * 1000 for c in self.failed]
        torn = [(self.released[c] - self.negotiated[c] - timeout) * 1000
                for c in self.released]
        arms = list(self.negotiated.values())
        fails = list(self.failed.values())
        return {"publish_all_s": published, "arm_spread_ms": (max(arms) - min(arms)) * 1000,
                "failed": len(late),
                "fail_late_vs_deadline_min_ms": min(exact, default=float("nan")),
                "fail_late_vs_deadline_p50_ms": pct(exact, 50) if exact else float("nan"),
                "fail_late_vs_deadline_max_ms": max(exact, default=float("nan")),
                "fail_late_min_ms": min(late),
                "fail_late_p50_ms": pct(late, 50), "fail_late_p99_ms": pct(late, 99),
                "fail_late_max_ms": max(late),
                "fail_late_vs_answer_p50_ms": pct(low, 50),
                "fail_late_vs_answer_max_ms": max(low),
                "fail_moment_spread_ms": (max(fails) - min(fails)) * 1000,
                "released": len(torn), "teardown_late_p50_ms": pct(torn, 50),
                "teardown_late_max_ms": max(torn) if torn else float("nan"),
                "stop_and_wait_calls": self.stops, "reasons": dict(self.reasons)}


async def load_main() -> None:
    async with run_scripted_kms(clock) as (url, kms):
        load = Load(kms)
        await serve_commands({"kms": url}, {"publish": load.publish, "collect": load.collect})


async def watchdogs(calls: int, timeout: float) -> list[float]:
    """The watchdog's own timers, no hub: when each fires after being armed together."""
    fired: list[float] = []
    done = asyncio.Event()
    start = time.monotonic()
    timers = []
    for i in range(calls):
        dog = MediaWatchdog(timeout)
        for kind in ("audio", "video"):
            dog.expect(Expectation(f"p{i}", "from-browser", kind),
                       asyncio.get_running_loop().time())

        def expired(_: object) -> None:
            fired.append(time.monotonic() - start)
            if len(fired) == calls:
                done.set()

        timer = WatchdogTimer(dog, expired)
        timer.rearm()
        timers.append(timer)
    await done.wait()
    return fired


async def bare(calls: int, timeout: float) -> list[float]:
    fired: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    start = time.monotonic()

    def fire() -> None:
        fired.append(time.monotonic() - start)
        if len(fired) == calls:
            done.set()

    for _ in range(calls):
        loop.call_later(timeout, fire)
    await done.wait()
    return fired


def measure(opts: argparse.Namespace, redis: str, tmp: Path) -> dict[str, Any]:
    tokens = str(tmp / "tokens.json")
    with Child("bench.watchdog", "--load", timeout=opts.timeout + 120) as load, Child(
            "bench.server", "hub", "--redis", redis, "--kurento", load.ready["kms"],
            "--calls", str(opts.calls), "--tokens", tokens,
            "--watchdog-timeout", str(opts.timeout)) as hub:
        load.ask("publish", url=hub.ready["url"], origin=hub.ready["origin"],
                 tokens=tokens, calls=opts.calls, timeout=opts.timeout)
        deadlines = hub.ask("watchdog_deadlines")["deadlines"]
        if opts.profile:
            hub.ask("profile_start")
        real = load.ask("collect", deadlines=deadlines)
        ending = hub.ask("ending")["ending"]
        hub_late = [(e - d) * 1000 for e, d in zip(ending, deadlines, strict=True)
                    if e is not None and d is not None]
        real |= {"hub_end_late_p50_ms": pct(hub_late, 50) if hub_late else float("nan"),
                 "hub_end_late_max_ms": max(hub_late, default=float("nan"))}
        if opts.profile:
            found = hub.ask("profile_stop", top=30)
            print(f"hub profile, from the watchdogs' arming to the last release "
                  f"({found['total_s']:.2f} s of CPU), by own time:")
            for row in found["top"]:
                print(f"  {row['own_s']:7.3f} {row['cum_s']:7.3f} {row['calls']:8d}  "
                      f"{row['where']}  <- {', '.join(row['callers'])}")
    timers = asyncio.run(watchdogs(opts.calls, opts.timeout))
    base = asyncio.run(bare(opts.calls, opts.timeout))
    reasons = real.pop("reasons")
    return {"calls": opts.calls, "timeout_s": opts.timeout, **real,
            "reasons": ",".join(f"{k}:{v}" for k, v in sorted(reasons.items())),
            "timers_only_late_max_ms": (max(timers) - opts.timeout) * 1000,
            "timers_only_spread_ms": (max(timers) - min(timers)) * 1000,
            "baseline_call_later_late_max_ms": (max(base) - opts.timeout) * 1000,
            "baseline_call_later_spread_ms": (max(base) - min(base)) * 1000,
            "target_met": real["fail_late_vs_deadline_max_ms"] <= 100
            and real["fail_late_vs_deadline_min_ms"] >= 0}


def main() -> None:
    bench_main("watchdog", __doc__ or "", measure, load_main, {"calls": 10, "timeout": 1.5},
               calls=200, timeout=3.0, profile=False)


if __name__ == "__main__":
    main()
