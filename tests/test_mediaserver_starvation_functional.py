"""A call through an embedded media server starved of CPU: what it lost is told to the
participants (`mediaInterrupted`) and named in the recordings' `problems`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

from signaling.call import CallKind
from telemed.app import RECORDINGS
from tests.hub_fixtures import clients_for, go_live, run_service
from tests.media_fixtures import mediaserver_process
from tests.services import RedisServer, free_port


async def test_a_starved_media_server_interrupts_the_call_and_flags_the_recordings(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """The media server process is stopped for 8 s mid-call (SIGSTOP): more arrives than
    its socket buffers hold. Its endpoints report the loss as NOT_FLOWING, the hub tells
    the participants `mediaInterrupted`, and verification flags each file with its hole."""
    port = free_port()
    # Pings unanswered for 8 s must not count as a lost server: the process lives on.
    env = {"TELEMED_MEDIA_HEALTH_INTERVAL": "30", "TELEMED_MEDIA_DOWN_AFTER": "60",
           "TELEMED_CALLS_WATCHDOG_TIMEOUT": "60"}
    async with mediaserver_process(port, tmp_path) as proc, run_service(
            tmp_path, redis_server.url, (f"ws://127.0.0.1:{port}/kurento",), env=env) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        clients = clients_for(service, call)
        try:
            await go_live(service, call, clients)
            await asyncio.sleep(1.0)  # media recorded before the starvation
            proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(8)  # the starvation itself: its length is the test
            proc.send_signal(signal.SIGCONT)
            interrupted = await clients["doc-1"].wait_event("mediaInterrupted", timeout=30)
            await clients["doc-1"].request("end")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            await asyncio.gather(*(c.close() for c in clients.values()))
        await asyncio.wait_for(service.app[RECORDINGS].wait(call.id), 60)
        (folder,) = [p for p in service.settings.recordings_path.glob("*/*/*/*")
                     if p.name == call.id]
        meta = json.loads((folder / "metadata.json").read_text())
    assert interrupted["participant"] in ("pat-1", "doc-1"), interrupted
    assert meta["state"] == "flagged", meta
    holed = [p for p in meta["problems"] if "media missing" in p and " at 00:" in p]
    assert holed, meta["problems"]
