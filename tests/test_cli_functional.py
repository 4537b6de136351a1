"""`telemed run` with no settings: the whole embedded service comes up and goes away cleanly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import scaled
from tests.services import free_port, free_udp_and_tcp_port, require_binary


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def poll_ready(url: str, timeout: float) -> dict[str, Any]:
    """Polls /readyz: readiness of a separate process has no event we could await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    last: Any = None
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            try:
                async with http.get(url) as resp:
                    last = (resp.status, await resp.json())
                    if resp.status == 200:
                        return last[1]  # type: ignore[no-any-return]
            except aiohttp.ClientError as exc:
                last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready within {scaled(timeout)}s; last answer: {last}")


async def relay_allocates(port: int, secret: str) -> bool:
    """Whether coturn grants a relay allocation to shared-secret credentials."""
    from aioice import Connection, TransportPolicy

    user = f"{int(time.time()) + 600}:cli-test"
    password = base64.b64encode(hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest())
    conn = Connection(ice_controlling=True, turn_server=("127.0.0.1", port), turn_username=user,
                      turn_password=password.decode(), transport_policy=TransportPolicy.RELAY)
    try:
        await asyncio.wait_for(conn.gather_candidates(), scaled(10))
        return any(c.type == "relay" for c in conn.local_candidates)
    finally:
        await conn.close()


async def test_run_with_no_settings_serves_readyz_with_children_up_and_stops_clean(
    tmp_path: Path,
) -> None:
    """Bare `telemed run` starts its three children and is ready; SIGTERM (a restart) leaves
    them running and the next `telemed run` reattaches to the same processes; SIGINT
    (Ctrl-C) leaves none running."""
    for binary in ("redis-server", "turnserver"):
        require_binary(binary)
    http_port = free_port()
    first_log = ""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")
    } | {
        "TELEMED_DATA_DIR": str(tmp_path / "data"),
        "TELEMED_HTTP_PORT": str(http_port),
        "TELEMED_MEDIA_EMBEDDED_PORT": str(free_port()),
        "TELEMED_TURN_EMBEDDED_PORT": str(free_udp_and_tcp_port()),
        # Child lines not in our format are debug: shown here, to check they are relayed.
        "TELEMED_LOG_LEVEL": "DEBUG",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telemed.cli", "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        body = await poll_ready(f"http://127.0.0.1:{http_port}/readyz", 30)
        children = body["children"]
        assert set(children) == {"redis", "mediaserver", "coturn"}
        assert all(c["state"] == "running" for c in children.values()), children
        assert body["redis"]["up"] is True
        assert all(m["up"] for m in body["media_servers"].values())
        pids = [c["pid"] for c in children.values()]
        assert all(running(p) for p in pids)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{http_port}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{http_port}/metrics") as resp:
                exposition = await resp.text()
        up = {s.labels["child"]: s.value for f in text_string_to_metric_families(exposition)
              for s in f.samples if s.name == "telemed_child_up"}
        assert up == {"redis": 1.0, "mediaserver": 1.0, "coturn": 1.0}

        # The embedded coturn signs with the generated secret and refuses anything else.
        secret = json.loads((tmp_path / "data" / "secrets.json").read_text())["turn_secret"]
        turn_port = int(env["TELEMED_TURN_EMBEDDED_PORT"])
        assert await relay_allocates(turn_port, secret) is True
        assert await relay_allocates(turn_port, "not-the-secret") is False

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0
        assert all(running(p) for p in pids)  # left for the next start
        assert proc.stderr is not None
        first_log = (await proc.stderr.read()).decode(errors="replace")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telemed.cli", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        again = (await poll_ready(f"http://127.0.0.1:{http_port}/readyz", 30))["children"]
        assert {name: c["pid"] for name, c in again.items()} == {
            name: c["pid"] for name, c in children.items()}
        assert all(c["starts"] == 0 for c in again.values()), again

        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0
        assert [p for p in pids if running(p)] == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        log = first_log + (await proc.stderr.read()).decode(errors="replace")
    # Each child's own output reached the service's log, marked with the child's name;
    # coturn's ~75-line banner only at debug, invisible at the default INFO.
    for child in ("redis", "mediaserver", "coturn"):
        assert f"logger=telemed.child.{child} child={child} " in log, child
    banner = [line for line in log.splitlines() if "logger=telemed.child.coturn " in line
              and "level=info" in line]
    assert banner == [], banner[:3]
    assert "the API key for the MIS is in " in log and "/ in a browser" in log
    secrets_file = tmp_path / "data" / "secrets.json"
    assert secrets_file.stat().st_mode & 0o077 == 0
    # The generated secrets never reach the log.
    for secret in json.loads(secrets_file.read_text()).values():
        assert secret not in log


async def test_a_bad_setting_stops_start_up_naming_it(tmp_path: Path) -> None:
    """An invalid environment setting makes `telemed run` exit 2 naming the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    env |= {"TELEMED_HTTP_PORT": "not-a-port", "TELEMED_DATA_DIR": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telemed.cli", "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), scaled(20))
    assert proc.returncode == 2
    assert b"TELEMED_HTTP_PORT" in err


def test_every_embedded_service_is_replaced_by_its_external_setting(tmp_path: Path) -> None:
    """An external Redis, Kurento or TURN setting replaces its embedded child and is used as is."""
    from telemed.embedded import plan
    from telemed.settings import load_settings

    base = {"TELEMED_DATA_DIR": str(tmp_path), "TELEMED_HTTP_PORT": str(free_port()),
            "TELEMED_MEDIA_EMBEDDED_PORT": str(free_port()),
            "TELEMED_TURN_EMBEDDED_PORT": str(free_udp_and_tcp_port())}
    specs, _ = plan(load_settings(env=base))
    assert [s.name for s in specs] == ["redis", "mediaserver", "coturn"]
    settings = load_settings(env=base | {
        "TELEMED_REDIS_URL": "redis://redis.internal:6379/0",
        "TELEMED_MEDIA_KURENTO_URLS": "ws://kms1:8888/kurento,ws://kms2:8888/kurento",
        "TELEMED_TURN_PROVIDER": "coturn-secret",
        "TELEMED_TURN_URLS": "turn:10.0.0.5:3478?transport=udp",
        "TELEMED_TURN_SECRETS": "newest,older"})
    specs, endpoints = plan(settings)
    assert specs == []
    assert endpoints.redis_url == "redis://redis.internal:6379/0"
    assert endpoints.kurento_urls == ("ws://kms1:8888/kurento", "ws://kms2:8888/kurento")
    assert endpoints.turn_urls == ("turn:10.0.0.5:3478?transport=udp",)
    assert endpoints.turn_secrets == ("newest", "older")
    specs, endpoints = plan(load_settings(env=base | {"TELEMED_TURN_PROVIDER": "none"}))
    assert [s.name for s in specs] == ["redis", "mediaserver"] and endpoints.turn_urls == ()


async def test_a_port_taken_by_another_process_stops_start_up_naming_it(
    tmp_path: Path,
) -> None:
    """Else the readiness probe would find the other process and call our child up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")} | {
            "TELEMED_DATA_DIR": str(tmp_path / "data"),
            "TELEMED_TURN_EMBEDDED_PORT": str(free_udp_and_tcp_port()),
        }
        for setting, env in (
            ("TELEMED_MEDIA_EMBEDDED_PORT", {"TELEMED_MEDIA_EMBEDDED_PORT": str(port),
                                             "TELEMED_HTTP_PORT": str(free_port())}),
            ("TELEMED_HTTP_PORT", {"TELEMED_MEDIA_EMBEDDED_PORT": str(free_port()),
                                   "TELEMED_HTTP_PORT": str(port)}),
        ):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telemed.cli", "run", env=base | env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), scaled(60))
            assert proc.returncode == 1, err.decode()[-2000:]
            assert setting.encode() in err and f"127.0.0.1:{port}".encode() in err
            # Whatever it had started is gone with it.
            leftovers = [line for line in _processes() if str(tmp_path) in line]
            assert leftovers == []


def _processes() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline and running(int(entry.name)):
                lines.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return lines
