"""What docs/api.md promises the MIS's webhook receiver, against a running service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.hub_fixtures import joined_consultation, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer
from tests.webhook_receiver import run_receiver

SECRET = "hook-secret-" + "d" * 20


async def test_the_end_of_a_call_sends_participant_left_for_everyone_still_in_it(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    """Ending a call with two participants joined: each gets participant.left before the
    call.ended webhook."""
    env = {"TELEMED_WEBHOOKS_SECRET": SECRET,
           "TELEMED_WEBHOOKS_RETRY_BASE": "0.05", "TELEMED_WEBHOOKS_RETRY_CAP": "0.2"}
    async with run_receiver(SECRET) as receiver, \
            run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,),
            env={**env, "TELEMED_WEBHOOKS_ENDPOINTS": receiver.url}) as service:
        async with joined_consultation(service) as (call, _, _):
            await service.hub.end(call.id)
            await receiver.wait_for("call.ended", call.id)
        order = receiver.events(call.id)
    left = [e["data"]["participant"] for e in receiver.received
            if e["event"] == "participant.left" and e["data"]["call"]["id"] == call.id]
    assert sorted(left) == ["doc-1", "pat-1"], order
    assert {e["data"]["why"] for e in receiver.received
            if e["event"] == "participant.left"} == {"call-ended"}
    assert order.index("call.ended") > max(i for i, e in enumerate(order)
                                           if e == "participant.left")
