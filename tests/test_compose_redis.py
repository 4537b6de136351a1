"""compose/'s Redis: a primary, a replica and three sentinels, and the service pointed at the
sentinels. Statically against the service's settings, then run: the data nodes' and the
sentinels' own shell scripts from docker-compose.yml start real redis-server processes on
loopback (only ports, paths and host names differ), a client made the way the service
makes it writes through them, and a failover with the shipped settings keeps the data.

No container engine runs here: the images are not started (see tests/test_compose.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from telemed.redis_client import connect, parse_sentinel_url
from telemed.settings import load_settings
from tests.helpers import scaled
from tests.services import free_port, require_binary, stop_process, wait_port
from tests.test_compose import compose, example_env, interpolate, service_env

DATA_NODES = ("redis", "redis-replica")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")


def test_the_service_reaches_redis_through_the_three_sentinels() -> None:
    """TELEMED_REDIS_URL names exactly the compose sentinels, on the port their config
    sets, the service name they monitor and the Redis password; the data nodes and the
    sentinels publish no port and depend on each other in start-up order."""
    env = example_env()
    services = compose()["services"]
    settings = load_settings(env=service_env(env))
    target = parse_sentinel_url(settings.redis.url)
    assert target.sentinels == tuple((name, 26379) for name in SENTINELS)
    assert (target.service, target.db, target.password) == ("telemed", 0,
                                                            env["REDIS_PASSWORD"])
    assert settings.redis.failover_wait > 3  # longer than the sentinels' down-after
    assert set(services["signaling"]["depends_on"]) == set(SENTINELS)
    for name in SENTINELS:
        script = services[name]["command"][0]
        assert 'echo "port 26379"' in script
        assert 'echo "sentinel monitor telemed redis 6379 2"' in script  # quorum: 2 of 3
        assert services[name]["depends_on"] == list(DATA_NODES)
        assert services[name]["environment"]["SENTINEL_NAME"] == name
        assert services[name]["volumes"] == [f"{name}:/data"]  # its state outlives it
    assert services["redis-replica"]["environment"]["REPLICA_OF"] == "redis"
    for name in (*DATA_NODES, *SENTINELS):
        assert "ports" not in services[name], name
        assert "REDIS_PASSWORD" not in " ".join(services[name]["entrypoint"]), name


def script_for(name: str, **replace: str) -> str:
    """The compose service's shell script, compose's interpolation done, with `replace`d
    strings (ports, paths, the image's entrypoint) swapped for this machine's."""
    script = interpolate(compose()["services"][name]["command"][0], example_env())
    for old, new in replace.items():
        assert old in script, (name, old)
        script = script.replace(old, new)
    return script


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The compose Redis services, started by their own scripts on loopback (outside the
    event loop: starting and stopping processes blocks)."""
    tmp, password = tmp_path / "redis", os.urandom(12).hex()
    binary = require_binary("redis-server")
    ports = {name: free_port() for name in (*DATA_NODES, *SENTINELS)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in (*DATA_NODES, *SENTINELS):
            folder = tmp / name
            folder.mkdir(parents=True)
            env = {k: interpolate(str(v), {**example_env(), "REDIS_PASSWORD": password})
                   for k, v in compose()["services"][name]["environment"].items()}
            if name in DATA_NODES:
                env.update(NODE_NAME="127.0.0.1",
                           REPLICA_OF="127.0.0.1" if env["REPLICA_OF"] else "")
                script = script_for(name, **{
                    "/tmp/redis.conf": str(folder / "redis.conf"),
                    "replicaof $REPLICA_OF 6379": f"replicaof $REPLICA_OF {ports['redis']}",
                    "docker-entrypoint.sh redis-server \"$conf\"":
                        f"{binary} \"$conf\" --port {ports[name]} --bind 127.0.0.1 "
                        f"--dir {folder}"})
            else:
                env.update(SENTINEL_NAME="127.0.0.1")
                script = script_for(name, **{
                    "/data/sentinel.conf": str(folder / "sentinel.conf"),
                    "port 26379": f"port {ports[name]}",
                    "monitor telemed redis 6379": f"monitor telemed 127.0.0.1 {ports['redis']}",
                    "docker-entrypoint.sh redis-server": binary})
            procs[name] = subprocess.Popen(["/bin/sh", "-c", script], cwd=folder,
                                           env={"PATH": os.environ["PATH"], **env},
                                           stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
            wait_port(ports[name], proc=procs[name])
        yield {"ports": ports, "procs": procs, "dirs": {n: tmp / n for n in ports},
               "password": password}
    finally:
        for proc in reversed(procs.values()):
            stop_process(proc)


def check_password_private(group: dict[str, Any], password: str) -> None:
    """The password went through private config files, never argv."""
    for name, proc in group["procs"].items():
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert password.encode() not in argv, name
    dirs = group["dirs"]
    for conf in [dirs[n] / "redis.conf" for n in DATA_NODES] + [
            dirs[n] / "sentinel.conf" for n in SENTINELS]:
        assert password in conf.read_text() and conf.stat().st_mode & 0o077 == 0, conf


async def until(check: Any, what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while not await check():
        assert loop.time() < deadline, f"{what} not within {scaled(timeout)} s"
        await asyncio.sleep(0.1)  # replication and the sentinels' gossip send no event


async def test_the_shipped_redis_scripts_replicate_fail_over_and_keep_the_password_private(
        compose_redis: dict[str, Any]) -> None:
    """Started by compose's own scripts: the replica syncs with the password (masterauth),
    the sentinels find each other and the replica, the service's client writes through
    them, a SENTINEL FAILOVER promotes the replica with the data, the client's next write
    reaches the new primary (not the demoted one, which still answers for a while), and
    the old primary follows; the password is in no argv and in no file others can read,
    and a client with a wrong one fails at once instead of waiting out failover_wait."""
    group, password = compose_redis, compose_redis["password"]
    ports = group["ports"]
    check_password_private(group, password)
    nodes = {n: aioredis.Redis(port=ports[n], password=password) for n in DATA_NODES}
    sentinels = [aioredis.Redis(port=ports[n], decode_responses=True) for n in SENTINELS]
    url = service_env({**example_env(), "REDIS_PASSWORD": password})["TELEMED_REDIS_URL"]
    for name in SENTINELS:
        url = url.replace(f"{name}:26379", f"127.0.0.1:{ports[name]}")
    client = connect(url, timeout=2.0, failover_wait=scaled(20))
    try:
        async def replica_in_sync(name: str) -> bool:
            info = await nodes[name].info("replication")
            return bool(info.get("master_link_status") == "up")

        async def sentinels_ready() -> bool:
            states = [await s.sentinel_master("telemed") for s in sentinels]
            return all(s["num-other-sentinels"] == 2 and s["num-slaves"] == 1
                       for s in states)

        await until(lambda: replica_in_sync("redis-replica"), "replica in sync")
        await until(sentinels_ready, "sentinels knowing each other and the replica")
        await client.set("kept", "yes")
        async with aioredis.Redis(port=ports["redis"]) as anonymous:
            with pytest.raises(aioredis.AuthenticationError):
                await anonymous.ping()  # the password is required
        wrong = connect(url.replace(password, "wrong"), timeout=2.0,
                        failover_wait=scaled(20))
        started = time.monotonic()
        with pytest.raises(aioredis.AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
        # Not a speed: a wrong password is not waited on as if it were a failover.
        assert time.monotonic() - started < scaled(5)

        await sentinels[0].execute_command("SENTINEL", "FAILOVER", "telemed")

        async def promoted() -> bool:
            named = {int((await s.sentinel_get_master_addr_by_name("telemed"))[1])
                     for s in sentinels}
            return named == {ports["redis-replica"]}

        await until(promoted, "the replica promoted")
        # The demoted primary still answers, and would take this write and lose it when it
        # resyncs: the client must go where the sentinels now point.
        await client.set("after", "yes")
        await until(lambda: replica_in_sync("redis"), "the old primary following")
        assert (await nodes["redis-replica"].info("replication"))["role"] == "master"
        assert await nodes["redis-replica"].mget("kept", "after") == [b"yes", b"yes"]
    finally:
        await client.aclose()
        for c in (*nodes.values(), *sentinels):
            await c.aclose()
