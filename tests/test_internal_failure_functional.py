"""A bug in a call's background work fails the call `internal` (the documented failure
reason), cleanly, rather than leaving it hanging half-changed; a failure of the world
outside (an OSError) in the same place does not. Real Redis, the embedded media server,
aiortc participants. The bug itself is injected: `CallSession._grace_over`, the work a
dropped participant's rejoin grace runs, is replaced by one that raises, since no real bug
is known to put there."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from signaling.call import CallState, FailureReason
from signaling.call_session import CallSession
from signaling.events import CallEvent
from tests.helpers import wait_until
from tests.hub_fixtures import Service, joined_consultation, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_REJOIN_GRACE": "0.2"}) as svc:
        yield svc


def grace_over_raising(exc: Exception) -> Any:
    async def grace_over(self: CallSession, pid: str) -> None:
        raise exc
    return grace_over


async def test_a_bug_in_a_calls_background_work_fails_the_call_internal(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The patient's socket drops and the grace's work raises KeyError: the doctor hears
    `callFailed` `internal` naming the error's type, the MIS's hooks hear `call.failed`,
    and the call is torn down (its session gone)."""
    monkeypatch.setattr(CallSession, "_grace_over", grace_over_raising(KeyError("pat-1")))
    heard: list[tuple[str, dict[str, Any]]] = []
    service.hub.hooks.append(lambda event, call, data: heard.append((event, data)))
    async with joined_consultation(service) as (call, patient, doctor):
        await patient.close()
        failed = await doctor.wait_event("callFailed")
    assert failed["reason"] == FailureReason.INTERNAL.value
    assert "KeyError" in failed["detail"]
    assert call.state is CallState.FAILED and call.failure is FailureReason.INTERNAL
    await wait_until(lambda: call.id not in service.hub.sessions)
    assert [d["reason"] for e, d in heard if e == CallEvent.FAILED] == ["internal"]


async def test_an_outside_failure_in_background_work_is_logged_and_the_call_goes_on(
        service: Service, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The same place failing with an OSError (a network or disk failure, which the paths
    that meet it handle) is logged with the call's id and does not fail the call."""
    monkeypatch.setattr(CallSession, "_grace_over", grace_over_raising(OSError("disk")))
    caplog.set_level(logging.ERROR, "signaling.hub")
    async with joined_consultation(service) as (call, patient, doctor):
        await patient.close()
        await wait_until(lambda: any("background task failed" in r.getMessage()
                                     for r in caplog.records))
        await doctor.request("ping")
        assert call.state is CallState.CONNECTING and call.id in service.hub.sessions
        assert not [e for e in doctor.events if e["type"] == "callFailed"]
