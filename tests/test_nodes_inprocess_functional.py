"""Two services (in this process) on one redis-server and one media server: ringing and
booked-call expiry across nodes.

The consultant's workstation is online on one node, the doctor on the other: the ring, the
answer and the call all reach them through the relay to the node that owns the call.
Without the relay the doctor's or the consultant's `hello` gets `call.not_found` on the
node that does not run the call. The node whose turn it is to expire booked calls asks
the node running one to end it; without that, it ended its own stale copy while the owner
went on with the call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mis.history import SINK, STORE
from signaling.call import CallKind
from telemed.app import CLUSTER
from telemed.recovery import expire_booked
from tests.hub_fixtures import CallClient, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer


@contextlib.asynccontextmanager
async def two_services(tmp_path: Path, redis_server: RedisServer
                       ) -> AsyncIterator[tuple[Service, Service]]:
    """Nodes A and B on one Redis and one media server, writing where it records."""
    shared = {"TELEMED_RECORDINGS_DIR": str(tmp_path / "rec")}
    async with run_mediaserver(recordings_root=tmp_path / "rec") as (kms_url, _), \
            run_service(tmp_path / "a", redis_server.url, (kms_url,), env=shared) as a, \
            run_service(tmp_path / "b", redis_server.url, (kms_url,), env=shared) as b:
        yield a, b


async def test_a_consultant_online_on_another_node_is_rung_and_the_call_goes_live(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The consultant says hello on node B, the doctor joins on node A: `incomingCall`
    reaches the consultant, the accept reaches the doctor, both publish and subscribe,
    the call goes live on its owner and ends for both; one of the two nodes relayed."""
    async with two_services(tmp_path, redis_server) as (a, b):
        call = a.hub.create_call(CallKind.REFERRAL, [
            ("doc-1", "Dr. Ivanov", "doctor"), ("fd-1", "Dr. Sidorova", "consultant")])
        await a.app[SINK].settle()  # booked in Redis, as the API answers only then
        doctor = CallClient(a, a.token(call.id, "doc-1", role="doctor"))
        consultant = CallClient(b, b.token(call.id, "fd-1", role="consultant"))
        await asyncio.gather(doctor.connect(), consultant.connect())
        try:
            await consultant.hello()  # online on B: B claims the call
            await doctor.join()  # on A: relayed to B
            ringing = await doctor.request("ring", participant="fd-1")
            assert ringing["type"] == "ringing"
            incoming = await consultant.wait_event("incomingCall")
            assert incoming["call"] == call.id and incoming["caller"]["name"] == "Dr. Ivanov"
            await consultant.request("accept")
            assert (await doctor.wait_event("ringAccepted"))["participant"] == "fd-1"
            await consultant.join()
            await asyncio.gather(doctor.publish(), consultant.publish())
            await asyncio.gather(doctor.subscribe("fd-1"), consultant.subscribe("doc-1"))
            await asyncio.gather(doctor.wait_event("callLive"),
                                 consultant.wait_event("callLive"))
            owner = b if call.id in b.hub.sessions else a
            assert call.id in owner.hub.sessions
            other = a if owner is b else b
            assert call.id not in other.hub.sessions
            relayed = other.app[CLUSTER].bus
            assert relayed.carried and relayed.frames_in > 0
            await consultant.request("end")
            await asyncio.gather(doctor.wait_event("callEnded"),
                                 consultant.wait_event("callEnded"))
        finally:
            await asyncio.gather(doctor.close(), consultant.close())


async def test_a_booked_call_whose_page_is_open_on_another_node_expires_there(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Node A runs the expiry round; the patient's pre-call page is on node B (which
    claimed the call): A has B end it `expired`, the patient hears it, and the call is
    over on B and in Redis."""
    async with two_services(tmp_path, redis_server) as (a, b):
        call = a.hub.create_call(CallKind.CONSULTATION, [
            ("pat", "P", "patient"), ("doc", "D", "doctor")])
        await a.app[SINK].settle()
        patient = CallClient(b, b.token(call.id, "pat"))
        await patient.connect()
        try:
            await patient.hello()
            assert call.id in b.hub.calls
            expired = await expire_booked(a.hub, a.app[STORE], None,
                                          now=time.time() + 86400, overrun=0, idle=60)
            assert expired == [call.id]
            failed = await patient.wait_event("callFailed")
            assert failed["reason"] == "expired"
            assert b.hub.calls[call.id].finished
            await b.app[SINK].settle()
            stored = await b.app[STORE].get(call.id)
            assert stored is not None and stored["failure"] == "expired"
        finally:
            await patient.close()


async def test_a_socket_for_a_call_that_began_on_another_node_is_relayed_there(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The patient joins and publishes on node A (the call has begun there); the doctor's
    socket then lands on node B, which carries it to A although B takes no calls over
    (`calls.take_over` off, as in these in-process services): the call goes live."""
    async with two_services(tmp_path, redis_server) as (a, b):
        call = a.hub.create_call(CallKind.CONSULTATION, [
            ("pat", "P", "patient"), ("doc", "D", "doctor")])
        await a.app[SINK].settle()
        patient = CallClient(a, a.token(call.id, "pat"))
        doctor = CallClient(b, b.token(call.id, "doc", role="doctor"))
        try:
            await patient.connect()
            await patient.join()
            await patient.publish()
            await a.app[SINK].settle()  # recorded as begun on A
            await doctor.connect()
            await doctor.join()
            await doctor.publish()
            await asyncio.gather(patient.subscribe("doc"), doctor.subscribe("pat"))
            await asyncio.gather(patient.wait_event("callLive"), doctor.wait_event("callLive"))
            assert call.id in a.hub.sessions and call.id not in b.hub.sessions
            await doctor.request("end")
            await patient.wait_event("callEnded")
        finally:
            await asyncio.gather(patient.close(), doctor.close())
