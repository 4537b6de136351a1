"""The test harness itself: the fixtures start and stop the real binaries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.services import require_binary, run_redis, run_turnserver


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


async def test_redis_fixture_runs_a_real_redis_server_and_stops_it(tmp_path: Path) -> None:
    """The redis fixture runs a real redis-server that answers PING and is gone on exit."""
    import redis.asyncio as aioredis

    with run_redis(tmp_path) as server:
        assert comm(server.pid) == "redis-server"
        client = aioredis.Redis.from_url(server.url)
        assert await client.ping() is True
        await client.aclose()
    assert not running(server.pid)


async def test_turn_fixture_runs_coturn_that_grants_an_allocation(tmp_path: Path) -> None:
    """The TURN fixture's coturn allocates for its secret's credentials, refuses others, stops."""
    import base64
    import hashlib
    import hmac
    import time

    uclient = require_binary("turnutils_uclient")
    with run_turnserver(tmp_path) as turn:
        assert comm(turn.pid) == "turnserver"
        user = f"{int(time.time()) + 600}:fixture-check"
        password = base64.b64encode(
            hmac.new(turn.secret.encode(), user.encode(), hashlib.sha1).digest()
        ).decode()
        proc = await asyncio.create_subprocess_exec(
            uclient, "-p", str(turn.port), "-u", user, "-w", password, "-y", "-c",
            "-n", "3", "-m", "1", "127.0.0.1",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        bad = await asyncio.create_subprocess_exec(
            uclient, "-p", str(turn.port), "-u", user, "-w", "wrong", "-y", "-c",
            "-n", "1", "-m", "1", "127.0.0.1",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(bad.wait(), 20) != 0
    assert not running(turn.pid)


async def test_browser_fixture_has_fake_camera_and_microphone(
    browser: Any, aiohttp_server: Any
) -> None:
    """The Chromium fixture grants getUserMedia a fake camera and microphone without prompting."""
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<title>t</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    server = await aiohttp_server(app, host="127.0.0.1")
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{server.port}/")
    kinds = await page.evaluate(
        """async () => {
            const s = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
            const k = s.getTracks().map(t => t.kind).sort();
            s.getTracks().forEach(t => t.stop());
            return k;
        }"""
    )
    assert kinds == ["audio", "video"]
    await page.close()
