"""A consultation between two aiortc participants that runs next to whatever a test does
to the service, and proves afterwards that its media still flows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from signaling.call import Call, CallKind, CallState
from tests.hub_fixtures import CallClient, Service, joined_consultation, run_service
from tests.media_fixtures import run_mediaserver


class LiveCall:
    def __init__(self, call: Call, patient: CallClient, doctor: CallClient) -> None:
        self.call, self.patient, self.doctor = call, patient, doctor

    async def still_fine(self) -> None:
        """Media still arrives on both sides, after whatever happened next to it."""
        assert self.call.state is CallState.LIVE
        before = dict(self.doctor.received["pat-1"])
        await self.doctor.request("ping")
        await self.patient.request("ping")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while self.doctor.received["pat-1"]["video"] <= before["video"] + 3:
            assert loop.time() < deadline, "media stopped flowing"
            await asyncio.sleep(0.1)  # frame counters have no event; checked ten times a second


@contextlib.asynccontextmanager
async def embedded_service(tmp_path: Path, redis_url: str) -> AsyncIterator[Service]:
    """The service in-process with the embedded media server (a child process)."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_url, (kms_url,)) as svc:
        yield svc


@contextlib.asynccontextmanager
async def live_call(service: Service) -> AsyncIterator[LiveCall]:
    """pat-1 and doc-1 publishing and receiving each other; the call is live."""
    async with joined_consultation(service) as (call, patient, doctor):
        await asyncio.gather(patient.publish(), doctor.publish())
        await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
        await doctor.wait_event("callLive")
        yield LiveCall(call, patient, doctor)
        await doctor.request("end")


def other_call(service: Service) -> Call:
    """A consultation of pat-9 and doc-9, next to the live one."""
    return service.hub.create_call(CallKind.CONSULTATION, [("pat-9", "P", "patient"),
                                                          ("doc-9", "D", "doctor")])
