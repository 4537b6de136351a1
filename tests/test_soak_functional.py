"""A 50-call version of `python -m bench.soak`: short recorded calls one after another
(aiortc peers, the embedded media server as its own process, real Redis and coturn)
leave nothing behind and memory stays within the documented bound."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from tests.helpers import scaled


# 50 calls take ~1.5 s each on a quiet machine, and up to ~10 s at a load of 18 on 2 cores.
@pytest.mark.timeout(scaled(960))
async def test_fifty_calls_in_a_row_leak_nothing() -> None:
    """No pipeline, lease, hub state, fd, task, timer or Redis key (beyond each call's
    history) outlives its call; RSS after the warm-up grows less than the soak's bound."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", "--calls", "50", "--every", "10",
        "--seconds", "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), scaled(900))
    finally:
        if proc.returncode is None:  # timed out: no soak left running after the test
            # SIGINT unwinds its context managers, which stop Redis, coturn and the media
            # server it started; SIGKILL would orphan them.
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-3000:]
    (line,) = [x for x in text.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["calls"] == 50
    assert result["leaked_objects"] == 0, text
    assert result["grown_counters"] == 0, text
    assert result["flat"] == 1, text
    # The call's summary, its timeline list and that list's sequence, its recordings entry,
    # and its owner record (which expires a day after the call).
    assert result["redis_keys_history_per_call"] < 6
