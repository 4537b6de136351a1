"""Referrals: the doctor rings a consultant who is online; accept, decline, timeout, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.call import Call, CallKind, CallState, FailureReason
from tests.hub_fixtures import CallClient, ProtocolError, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer

RING_TIMEOUT = 0.5


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_RING_TIMEOUT": str(RING_TIMEOUT)}) as svc:
        yield svc


@pytest.fixture
async def referral(service: Service) -> AsyncIterator[tuple[Call, CallClient, CallClient]]:
    call = service.hub.create_call(CallKind.REFERRAL, [
        ("doc-1", "Dr. Ivanov", "doctor"), ("fd-1", "Dr. Sidorova", "consultant")])
    doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor"))
    consultant = CallClient(service, service.token(call.id, "fd-1", role="consultant"))
    await asyncio.gather(doctor.connect(), consultant.connect())
    try:
        yield call, doctor, consultant
    finally:
        await asyncio.gather(doctor.close(), consultant.close())


async def test_an_accepted_referral_becomes_a_live_call(
    referral: tuple[Call, CallClient, CallClient]
) -> None:
    """An accepted ring goes ringing, connecting, live, and its timeout no longer applies."""
    call, doctor, consultant = referral
    await consultant.hello()  # the consultant's workstation is online
    await doctor.join()
    assert call.state is CallState.CREATED
    ringing = await doctor.request("ring", participant="fd-1")
    assert ringing["type"] == "ringing" and ringing["timeout"] == RING_TIMEOUT
    incoming = await consultant.wait_event("incomingCall")
    assert incoming["call"] == call.id and incoming["caller"]["name"] == "Dr. Ivanov"
    assert call.state is CallState.RINGING
    await consultant.request("accept")
    assert (await doctor.wait_event("ringAccepted"))["participant"] == "fd-1"
    assert call.state is CallState.CONNECTING
    await consultant.join()
    await asyncio.gather(doctor.publish(), consultant.publish())
    await asyncio.gather(doctor.subscribe("fd-1"), consultant.subscribe("doc-1"))
    await doctor.wait_event("callLive")
    assert call.state is CallState.LIVE
    await asyncio.sleep(RING_TIMEOUT * 2)  # past the ring timeout: an answered ring is done
    assert call.state is CallState.LIVE
    await consultant.request("end")
    await doctor.wait_event("callEnded")


async def test_a_declined_referral_fails_and_tells_the_doctor(
    referral: tuple[Call, CallClient, CallClient]
) -> None:
    """A declined ring fails the call `declined` and both sides are told."""
    call, doctor, consultant = referral
    await consultant.hello()
    await doctor.join()
    await doctor.request("ring", participant="fd-1")
    await consultant.wait_event("incomingCall")
    await consultant.request("decline")
    await doctor.wait_event("ringDeclined")
    failed = await doctor.wait_event("callFailed")
    assert failed["reason"] == "declined"
    assert (await consultant.wait_event("callFailed"))["reason"] == "declined"
    assert call.state is CallState.FAILED and call.failure is FailureReason.DECLINED


async def test_an_unanswered_referral_times_out_for_both(
    referral: tuple[Call, CallClient, CallClient]
) -> None:
    """An unanswered ring fails `ring-timeout` for both, and a late accept is refused."""
    call, doctor, consultant = referral
    await consultant.hello()
    await doctor.hello()  # ringing from the doctor's worklist, before joining
    await doctor.request("ring", participant="fd-1")
    for side in (doctor, consultant):
        await side.wait_event("ringTimeout", timeout=RING_TIMEOUT + 5)
        assert (await side.wait_event("callFailed"))["reason"] == "ring-timeout"
    assert call.failure is FailureReason.RING_TIMEOUT
    with pytest.raises(ProtocolError) as info:
        await consultant.request("accept")
    assert info.value.code == "call.ended"


async def test_the_doctor_can_cancel_the_ring(
    referral: tuple[Call, CallClient, CallClient]
) -> None:
    """The doctor's cancel tells the consultant the ring is off and ends the call."""
    call, doctor, consultant = referral
    await consultant.hello()
    await doctor.join()
    await doctor.request("ring", participant="fd-1")
    await doctor.request("cancel")
    await consultant.wait_event("ringCancelled")
    await consultant.wait_event("callEnded")
    assert call.state is CallState.ENDED


async def test_a_doctor_who_disconnects_while_ringing_cancels_it(
    referral: tuple[Call, CallClient, CallClient]
) -> None:
    """The doctor's socket closing while ringing cancels the ring and ends the call."""
    call, doctor, consultant = referral
    await consultant.hello()
    await doctor.hello()
    await doctor.request("ring", participant="fd-1")
    await consultant.wait_event("incomingCall")
    await doctor.close()
    await consultant.wait_event("ringCancelled")
    assert call.state is CallState.ENDED


async def test_ringing_rules(service: Service, referral: tuple[Call, CallClient, CallClient]
                             ) -> None:
    """Ringing is refused with its own error code for each misuse, and none changes the call."""
    call, doctor, consultant = referral
    await doctor.join()
    with pytest.raises(ProtocolError) as info:
        await doctor.request("ring", participant="fd-1")
    assert info.value.code == "participant.offline"
    await consultant.hello()
    with pytest.raises(ProtocolError) as info:
        await consultant.request("join")
    assert info.value.code == "call.not_accepted"
    with pytest.raises(ProtocolError) as info:
        await consultant.request("ring", participant="doc-1")
    assert info.value.code == "call.not_allowed"
    with pytest.raises(ProtocolError) as info:
        await consultant.request("accept")
    assert info.value.code == "call.not_ringing"
    with pytest.raises(ProtocolError) as info:
        await doctor.request("ring", participant="nobody")
    assert info.value.code == "participant.not_found"
    assert call.state is CallState.CREATED

    consultation = service.hub.create_call(CallKind.CONSULTATION, [
        ("p", "P", "patient"), ("d", "D", "doctor")])
    other = CallClient(service, service.token(consultation.id, "d", role="doctor"))
    try:
        await other.connect()
        await other.hello()
        with pytest.raises(ProtocolError) as info:
            await other.request("ring", participant="p")
        assert info.value.code == "call.not_referral"
    finally:
        await other.close()
