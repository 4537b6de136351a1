"""Watchdog precision: N calls whose media never flows start together; how far from the
configured timeout do they fail? Baseline: N bare `loop.call_later` timers.

    python -m bench.watchdog [--calls 200] [--timeout 1.0]
"""

from __future__ import annotations

import asyncio
import time

from bench.common import args, pct, report
from signaling.watchdog import Expectation, MediaWatchdog, WatchdogTimer


async def watchdogs(calls: int, timeout: float) -> list[float]:
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


def main() -> None:
    opts = args(__doc__ or "", calls=200, timeout=1.0)
    calls = 20 if opts.smoke else opts.calls
    timeout = 0.2 if opts.smoke else opts.timeout
    ours = asyncio.run(watchdogs(calls, timeout))
    base = asyncio.run(bare(calls, timeout))
    late = [(t - timeout) * 1000 for t in ours]
    base_late = [(t - timeout) * 1000 for t in base]
    report("watchdog", {
        "calls": calls, "timeout_s": timeout,
        "late_p50_ms": pct(late, 50), "late_max_ms": max(late),
        "spread_ms": (max(ours) - min(ours)) * 1000,
        "baseline_late_max_ms": max(base_late),
        "baseline_spread_ms": (max(base) - min(base)) * 1000,
        "early_failures": sum(1 for t in ours if t < timeout),
    })


if __name__ == "__main__":
    main()
