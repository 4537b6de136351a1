"""A Redis that hangs (SIGSTOP, as a frozen VM or a stuck fsync does) must not hang the
MIS: the API answers a documented 503 with Retry-After at once, then recovers."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt

from tests.helpers import scaled, within
from tests.hub_fixtures import API_KEY, JWT_SECRET, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import run_redis

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CALL = {"kind": "consultation",
        "participants": [{"id": "pat-1", "name": "P", "role": "patient"},
                         {"id": "doc-1", "name": "D", "role": "doctor"}]}


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_hung_redis_gets_a_fast_503_with_retry_after(tmp_path: Path) -> None:
    """GET /calls, GET /turn and POST /calls (with and without an Idempotency-Key) answer
    503 service.unavailable with Retry-After while Redis is stopped; 201 once it is back."""
    with run_redis(tmp_path / "redis") as redis:
        async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
                tmp_path, redis.url, (kms_url,), turn_urls=("turn:127.0.0.1:3478",),
                turn_secrets=("s" * 32,), env={"TELEMED_REDIS_TIMEOUT": "1"}) as service, \
                aiohttp.ClientSession() as http:
            async with http.get(f"{service.url}/api/v1/calls", headers=AUTH) as r:
                assert r.status == 200  # the connection pool is warm before the freeze
            requests = [("GET", "/api/v1/calls", None, {}),
                        ("GET", "/api/v1/turn", None, {}),
                        ("POST", "/api/v1/calls", CALL, {}),
                        ("POST", "/api/v1/calls", CALL, {"Idempotency-Key": "visit-1"})]
            with frozen(redis.pid):
                for method, path, body, extra in requests:
                    started = time.monotonic()
                    async with http.request(method, f"{service.url}{path}", json=body,
                                            headers={**AUTH, **extra}) as r:
                        answer = await within(r.json(), 10, f"answer to {method} {path}")
                        assert r.status == 503, (method, path, answer)
                        assert answer["code"] == "service.unavailable"
                        assert int(r.headers["Retry-After"]) > 0
                    # Not a fixed figure: far below the 12 s the issue saw, whatever the load.
                    assert time.monotonic() - started < scaled(5), (method, path)
                assert service.hub.calls == {}  # nothing created while Redis was away
                # The doctor's player page, outside the API, answers the same way.
                link = jwt.encode({"call": "c-1", "aud": "telemed-recordings",
                                   "exp": int(time.time()) + 60}, JWT_SECRET,
                                  algorithm="HS256")
                async with http.get(f"{service.url}/recordings/{link}") as r:
                    answer = await within(r.json(), 10, "the player page")
                    assert (r.status, answer["code"]) == (503, "service.unavailable")
                    assert int(r.headers["Retry-After"]) > 0
            async with http.post(f"{service.url}/api/v1/calls", json=CALL,
                                 headers={**AUTH, "Idempotency-Key": "visit-1"}) as r:
                assert r.status == 201, await r.text()
