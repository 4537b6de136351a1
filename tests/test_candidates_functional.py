"""Trickled ICE candidates through the real socket: the filter's verdicts reach the client
and the call's timeline, and early candidates are capped per participant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.session import SESSION_CONFIG
from tests.hub_fixtures import CallClient, ProtocolError, Service
from tests.live_call import LiveCall, embedded_service, live_call, other_call
from tests.services import RedisServer

PUBLIC = "candidate:1 1 udp 2122260223 81.2.69.160 54400 typ host generation 0"


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with embedded_service(tmp_path, redis_server.url) as svc:
        yield svc


@pytest.fixture
async def live(service: Service) -> AsyncIterator[LiveCall]:
    async with live_call(service) as call:
        yield call


@pytest.fixture
async def joined(service: Service) -> AsyncIterator[CallClient]:
    """pat-9, joined to a call of its own that has not published yet."""
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        yield client
    finally:
        await client.close()


async def candidate(client: CallClient, line: str, target: str = "publish") -> str:
    """The reply's type, or the error code."""
    try:
        reply = await client.request("candidate", target=target, candidate=line,
                                     sdpMid="0", sdpMLineIndex=0)
    except ProtocolError as exc:
        return str(exc.code)
    return str(reply["type"])


async def test_an_unparsable_candidate_gets_candidate_invalid_and_the_socket_goes_on(
    service: Service, joined: CallClient, live: LiveCall
) -> None:
    """What docs/protocol.md promises: a broken candidate line is answered
    `candidate.invalid`, not `ok`; good ones after it are still taken."""
    for line in ("candidate:garbage", PUBLIC.replace("54400", "70000"),
                 PUBLIC.replace(" typ ", " tip "), PUBLIC.replace("2122260223", "+5")):
        assert await candidate(joined, line) == "candidate.invalid", line
    assert await candidate(joined, PUBLIC) == "ok"
    assert (await joined.request("ping"))["type"] == "pong"
    await live.still_fine()


async def test_local_addresses_in_every_disguise_are_dropped_and_a_prefix_stripped(
    service: Service, joined: CallClient
) -> None:
    """::ffff:127.0.0.1, 169.254/16, component 3, port 0 and broadcast never reach the
    media server (each is in the timeline as dropped); `a=candidate:` goes on without
    its `a=`, and ::ffff:a.b.c.d as a.b.c.d."""
    call_id = next(c for c, people in service.hub.presence.online.items() if "pat-9" in people)
    bad = {
        "::ffff:127.0.0.1": "loopback", "::ffff:169.254.0.9": "link-local",
        "169.254.169.254": "link-local", "255.255.255.255": "broadcast",
    }
    for address in bad:
        assert await candidate(joined, PUBLIC.replace("81.2.69.160", address)) == "ok"
    assert await candidate(joined, PUBLIC.replace(" 1 udp", " 3 udp")) == "ok"
    assert await candidate(joined, PUBLIC.replace("54400", "0")) == "ok"
    assert await candidate(joined, "a=" + PUBLIC) == "ok"
    assert await candidate(joined, PUBLIC.replace("81.2.69.160", "::ffff:81.2.69.161")) == "ok"
    call = service.hub.calls[call_id]
    dropped = [r for e in call.timeline.as_list() if e["event"] == "candidates-dropped"
               for r in e["reasons"]]
    assert dropped == [*bad.values(), "component", "port-zero"]
    held = service.hub.sessions[call_id].media.buffer.take("pat-9/publish")
    assert [c["candidate"] for c in held] == [
        PUBLIC, PUBLIC.replace("81.2.69.160", "81.2.69.161")]


async def test_early_candidates_for_invented_targets_are_capped_per_participant(
    service: Service, live: LiveCall
) -> None:
    """Candidates naming targets that never get an endpoint stop at the documented cap of
    256 per participant with `candidate.too_many`; its own publish still works after."""
    config = service.app[SESSION_CONFIG]
    config.rate, config.burst = 1e6, 1e6  # the cap, not the rate limit, is under test
    call = other_call(service)
    client = CallClient(service, service.token(call.id, "pat-9"))
    try:
        await client.connect()
        await client.join()
        replies = await asyncio.gather(*(candidate(client, PUBLIC, target=f"invented-{i}")
                                         for i in range(300)))
        assert replies.count("ok") == 256
        assert set(replies[256:]) == {"candidate.too_many"}
        # The watchdog's tally of browser candidates is held to the same cap.
        assert len(service.hub.sessions[call.id].media.filter.browser.passed) == 256
        await client.publish()  # needs no early candidate
        assert (await client.request("ping"))["type"] == "pong"
    finally:
        await client.close()
    await live.still_fine()
