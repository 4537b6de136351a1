"""Redis behind Sentinel: real redis-server primary and replica, three real
`redis-server --sentinel`, failovers both ways (SENTINEL FAILOVER, SIGKILL of the primary).
The service keeps its calls, its history and its webhooks across them."""

from __future__ import annotations

import asyncio
import collections
import gc
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from mis.api import REDIS
from mis.history import STORE
from signaling.call import CallState
from telemed import cli
from telemed.redis_client import connect, parse_sentinel_url
from telemed.redis_failover import FailoverFailed, planned_failover
from telemed.settings import SettingsError, load_settings
from tests.helpers import poll_until, scaled, wait_until
from tests.hub_fixtures import API_KEY, run_service
from tests.live_call import live_call, other_call
from tests.media_fixtures import run_mediaserver
from tests.services import SentinelGroup, run_sentinel_group
from tests.webhook_receiver import run_receiver

# A connection to a primary these tests SIGKILL or demote is sometimes left for the
# garbage collector during the failover (redis-py's Connection, its StreamWriter, transport
# and socket): not traced to its source yet (issue #17's closing note). It is bounded (one
# per failover) and would fail a later, unrelated test where the collector happens to run;
# the behaviour asserted here is not affected.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(socket\.socket|function (StreamWriter|_SelectorTransport"
    r"|AbstractConnection)\.__del__):pytest.PytestUnraisableExceptionWarning")



@pytest.fixture(autouse=True)
def collect_the_leak_here() -> Iterator[None]:
    """The leaked connection is collected at this test's teardown, under the filter above,
    rather than whenever the collector next runs: in CI it failed an unrelated later test
    (test_socket_limits_functional) during its setup."""
    yield
    gc.collect()


AUTH = {"Authorization": f"Bearer {API_KEY}"}
SECRET = "hook-secret-" + "s" * 20
CALL = {"kind": "consultation",
        "participants": [{"id": "pat-1", "name": "P", "role": "patient"},
                         {"id": "doc-1", "name": "D", "role": "doctor"}]}


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    with run_sentinel_group(tmp_path / "sentinel") as group:
        yield group


async def primary_port(group: SentinelGroup) -> int:
    async with aioredis.Redis(port=group.sentinel_ports[0], decode_responses=True) as s:
        _host, port = await s.sentinel_get_master_addr_by_name(group.service)
    return int(port)


async def new_primary(group: SentinelGroup, old: int, timeout: float = 20) -> int:
    """The port the sentinels name as primary once every one of them has moved off `old`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    clients = [aioredis.Redis(port=p, decode_responses=True) for p in group.sentinel_ports]
    try:
        while True:
            named = {int((await c.sentinel_get_master_addr_by_name(group.service))[1])
                     for c in clients}
            if len(named) == 1 and old not in named:
                return named.pop()
            assert loop.time() < deadline, f"no failover off {old} in {timeout}s: {named}"
            await asyncio.sleep(0.05)  # the sentinels publish no event to a plain client
    finally:
        for c in clients:
            await c.aclose()


async def in_sync(port: int, timeout: float = 30) -> None:
    """Waits until the redis-server on `port` is a replica with its link to the primary up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    async with aioredis.Redis(port=port) as node:
        while (await node.info("replication")).get("master_link_status") != "up":
            assert loop.time() < deadline, f"{port} not a replica in sync in {timeout}s"
            await asyncio.sleep(0.1)  # replication state sends no event


def kill(group: SentinelGroup, port: int) -> None:
    group.servers[port].send_signal(signal.SIGKILL)
    group.servers[port].wait()


def test_sentinel_urls_name_the_sentinels_the_service_and_the_database() -> None:
    """Several sentinels (default port, IPv6), the service name, db and both passwords come
    out of a redis+sentinel:// URL; a malformed one is refused by the settings, naming
    redis.url and never showing a password."""
    target = parse_sentinel_url(
        "redis+sentinel://:p%40ss@s1:26380,s2,[::1]:26381/telemed/3?sentinel_password=x")
    assert target.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (target.service, target.db, target.password, target.sentinel_password) == (
        "telemed", 3, "p@ss", "x")
    plain = parse_sentinel_url("redis+sentinel://s1:1/mymaster")
    assert (plain.db, plain.password, plain.sentinel_password) == (0, None, None)
    assert load_settings(env={"TELEMED_REDIS_URL": "redis+sentinel://s1/telemed"}).redis.url
    for bad in ("redis+sentinel://s1:26379", "redis+sentinel:///telemed",
                "redis+sentinel://s1:notaport/telemed", "redis+sentinel://s1/telemed/x",
                "redis+sentinel://user:pw@s1/telemed", "redis+sentinel://s1/t?sentinel=1",
                "http://redis:6379/0"):
        with pytest.raises(SettingsError, match=r"redis\.url"):
            load_settings(env={"TELEMED_REDIS_URL": bad})
    for leaky in ("redis+sentinel://:s3cr3t@s1:x/telemed",
                  "redis+sentinel://s1/telemed?sentinel_password=s3cr3t&x=1"):
        with pytest.raises(SettingsError) as refused:
            load_settings(env={"TELEMED_REDIS_URL": leaky})
        assert "s3cr3t" not in str(refused.value) and "***" in str(refused.value)


async def test_writes_during_a_primary_kill_wait_for_the_new_primary_and_none_is_lost(
        sentinels: SentinelGroup) -> None:
    """A client from the factory writes on while its primary is SIGKILLed: every write
    succeeds (it is retried on the promoted replica instead of failing), and the new
    primary holds every acknowledged one. The control, redis-py's Sentinel client without
    our retry, fails the writes it makes until the sentinels name the new primary."""
    # A budget longer than any failover here: what is proved is the retrying, not a speed.
    client = connect(sentinels.url, timeout=2.0, failover_wait=scaled(15))
    control = Sentinel([("127.0.0.1", p) for p in sentinels.sentinel_ports],  # type: ignore[no-untyped-call]
                       socket_timeout=2).master_for(sentinels.service, socket_timeout=2)
    try:
        old = await primary_port(sentinels)
        assert old == sentinels.first_primary
        await client.set("before", "kept")
        acked = collections.Counter[str]()
        failures: dict[str, list[str]] = {"ours": [], "control": []}
        done = asyncio.Event()

        async def write_on(name: str, writer: aioredis.Redis) -> None:
            while not done.is_set():
                try:
                    await writer.incr(name)
                    acked[name] += 1
                except aioredis.RedisError as exc:
                    failures[name].append(repr(exc))
                await asyncio.sleep(0.01)  # a steady writer, not a busy loop

        writers = [asyncio.create_task(write_on("ours", client)),
                   asyncio.create_task(write_on("control", control))]
        await wait_until(lambda: min(acked["ours"], acked["control"]) >= 10)
        killed_at = time.monotonic()
        kill(sentinels, old)
        # The first write issued after the death, timed: what a failover costs a writer.
        await client.incr("first-after-kill")
        first_write = time.monotonic() - killed_at
        new = await new_primary(sentinels, old)
        at_switch = acked["ours"]
        await wait_until(lambda: acked["ours"] >= at_switch + 10)
        done.set()
        await asyncio.gather(*writers)
        print(f"\nfirst successful write {first_write:.2f} s after the primary's SIGKILL")
        assert failures["ours"] == []
        assert failures["control"], "the kill interrupted no write: nothing was proved"
        async with aioredis.Redis(port=new) as promoted:
            assert (await promoted.info("replication"))["role"] == "master"
            assert int(await promoted.get("ours")) == acked["ours"]
            assert await promoted.get("before") == b"kept"
    finally:
        await client.aclose()
        await control.aclose()


async def test_calls_created_through_the_api_are_read_back_after_both_kinds_of_failover(
        tmp_path: Path, sentinels: SentinelGroup) -> None:
    """The service pointed at the sentinels creates a call through the REST API, and reads
    it back after a SENTINEL FAILOVER and again after a SIGKILL of the promoted primary; it
    creates calls on the newest primary too."""
    async with run_service(tmp_path, sentinels.url, ("ws://127.0.0.1:9/kurento",)) as service, \
            aiohttp.ClientSession() as http:

        async def create() -> str:
            async with http.post(f"{service.url}/api/v1/calls", json=CALL, headers=AUTH) as r:
                assert r.status == 201, await r.text()
                return str((await r.json())["id"])

        async def read(call_id: str) -> dict[str, Any]:
            async with http.get(f"{service.url}/api/v1/calls/{call_id}", headers=AUTH) as r:
                assert r.status == 200, await r.text()
                return dict(await r.json())

        first = await create()
        await service.app_sink_settled()
        old = await primary_port(sentinels)
        async with aioredis.Redis(port=sentinels.sentinel_ports[1]) as sentinel:
            await sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.service)
        promoted = await new_primary(sentinels, old)
        # The client asks the sentinels at most every 0.5 s (docs/deployment.md: what it
        # writes in that window after the announcement may reach the demoted primary and be
        # lost without `min-replicas-to-write`); this test is about what it writes after.
        await service.app[REDIS].connection_pool.get_master_address()
        assert (await read(first))["id"] == first
        second = await create()
        await service.app_sink_settled()

        # Only a replica that follows the new primary has its writes: until the sentinels
        # have turned the demoted primary into one, a second failure would lose them.
        await in_sync(old)
        kill(sentinels, promoted)
        last = await new_primary(sentinels, promoted)
        assert last == old  # the demoted primary, a replica since, is promoted back
        for call_id in (first, second):
            assert (await service.app[STORE].get(call_id))["state"] == "created"
        third = await create()
        await service.app_sink_settled()
        # The list is read from Redis (a call's own page from the hub's memory first).
        async with http.get(f"{service.url}/api/v1/calls", headers=AUTH) as r:
            assert r.status == 200
            listed = {c["id"] for c in (await r.json())["calls"]}
        assert listed == {first, second, third}


async def test_a_live_call_rides_out_a_primary_kill_and_every_webhook_arrives_once(
        tmp_path: Path, sentinels: SentinelGroup) -> None:
    """A live aiortc call goes on while the Redis primary is SIGKILLed and a call is created
    during the failover: the call stays live with media flowing, ends normally, its history
    is on the new primary, and every event the hub reported reaches the webhook receiver
    exactly once (unique ids, none missing)."""
    async with run_receiver(SECRET) as receiver, \
            run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, sentinels.url, (kms_url,), env={
                "TELEMED_WEBHOOKS_ENDPOINTS": receiver.url,
                "TELEMED_WEBHOOKS_SECRET": SECRET, "TELEMED_WEBHOOKS_RETRY_BASE": "0.05",
                "TELEMED_WEBHOOKS_RETRY_CAP": "0.2",
                # A delivery whose booking were lost would be sent again within the test.
                "TELEMED_WEBHOOKS_CLAIM_TIMEOUT": "1"}) as service:
        reported: list[tuple[str, str]] = []
        service.hub.hooks.append(lambda event, call, data: reported.append((event, call.id)))
        async with live_call(service) as live:
            await service.app_sink_settled()
            old = await primary_port(sentinels)
            kill(sentinels, old)
            # Events while no primary answers: the journal and the retry loops hold them.
            during = other_call(service)
            await live.doctor.request("clientEvent", event="mediaReceived",
                                      data={"participant": "pat-1"})
            await new_primary(sentinels, old)
            await live.still_fine()
            assert live.call.state is CallState.LIVE
        await live.doctor.wait_event("callEnded")
        assert live.call.state is CallState.ENDED
        await service.app_sink_settled()
        await wait_until(lambda: len(receiver.received) >= len(reported), timeout=20,
                         describe=lambda: (reported, receiver.events()))
        ids = [e["id"] for e in receiver.received]
        assert len(ids) == len(set(ids)), collections.Counter(ids).most_common(3)
        delivered = [(e["event"], e["data"]["call"]["id"]) for e in receiver.received]
        assert sorted(delivered) == sorted(reported)
        assert ("call.ended", live.call.id) in delivered
        assert ("call.created", during.id) in delivered
        stored = await service.app[STORE].get(live.call.id)
        assert stored is not None and stored["state"] == "ended"


async def test_a_planned_failover_fails_and_loses_no_write(
        sentinels: SentinelGroup) -> None:
    """`telemed redis-failover` (docs/deployment.md) under a steady writer: no write fails,
    the new primary holds every acknowledged one, writes waited well under redis.timeout,
    and the old primary, now a replica, has its min-replicas-to-write back as it was. A
    bare SENTINEL FAILOVER lost one write in 2,381 in a CI run: the old primary took it
    after its replica's promotion."""
    client = connect(sentinels.url, timeout=2.0, failover_wait=scaled(15))
    old = sentinels.first_primary
    try:
        acked, failures = 0, []
        done = asyncio.Event()

        async def write_on() -> None:
            nonlocal acked
            while not done.is_set():
                try:
                    await client.incr("counter")
                    acked += 1
                except aioredis.RedisError as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(0.002)  # a steady writer, not a busy loop

        writer = asyncio.create_task(write_on())
        await wait_until(lambda: acked >= 10)
        moved = await planned_failover(sentinels.url, wait=scaled(30))
        assert moved.old == ("127.0.0.1", old) and moved.new[1] != old
        assert moved.paused < 2.0
        written = acked
        await wait_until(lambda: acked >= written + 10)  # writes go on, on the new primary
        done.set()
        await writer
        assert failures == []
        async with aioredis.Redis(port=moved.new[1]) as promoted:
            assert int(await promoted.get("counter")) == acked
        async with aioredis.Redis(port=old) as demoted:
            assert (await demoted.info("replication"))["role"] == "slave"
            assert (await demoted.config_get("min-replicas-to-write")) == {
                "min-replicas-to-write": "0"}
    finally:
        await client.aclose()


async def test_a_planned_failover_without_a_replica_in_sync_changes_nothing(
        sentinels: SentinelGroup) -> None:
    """With the replica down, `telemed redis-failover` refuses, saying why, and leaves the
    primary as it was: still primary, taking writes, min-replicas-to-write untouched."""
    old = sentinels.first_primary
    replica = next(p for p in sentinels.servers if p != old)
    kill(sentinels, replica)
    async with aioredis.Redis(port=old, decode_responses=True) as primary:
        async def replica_gone() -> bool:
            return bool((await primary.info("replication"))["connected_slaves"] == 0)

        await poll_until(replica_gone, what="the primary seeing its replica gone")
        with pytest.raises(FailoverFailed, match="could lose writes; nothing was changed"):
            await planned_failover(sentinels.url, wait=scaled(10))
        assert (await primary.info("replication"))["role"] == "master"
        assert await primary.config_get("min-replicas-to-write") == {
            "min-replicas-to-write": "0"}
        assert await primary.incr("counter") == 1


def test_the_failover_command_refuses_a_redis_url_without_sentinels(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`telemed redis-failover` needs a redis+sentinel:// URL: with a plain one it exits 2
    naming redis.url, and shows no password."""
    monkeypatch.setenv("TELEMED_REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    assert cli.main(["redis-failover"]) == 2
    err = capsys.readouterr().err
    assert "redis.url" in err and "redis+sentinel://" in err and "s3cret" not in err


async def test_a_frozen_primary_costs_one_timed_out_command_then_writes_follow_the_failover(
        sentinels: SentinelGroup) -> None:
    """A primary that hangs (SIGSTOP: a frozen VM) fails the command waiting on it after
    redis.timeout, as without Sentinel; the writes after it are not failed by the frozen
    primary's handshake timing out but wait for the sentinels to promote the replica, and
    the new primary holds every acknowledged one."""
    client = connect(sentinels.url, timeout=0.5, failover_wait=scaled(15))
    old = sentinels.first_primary
    frozen = sentinels.servers[old]
    acked, failures = 0, []
    done = asyncio.Event()

    async def write_on() -> None:
        nonlocal acked
        while not done.is_set():
            try:
                await client.incr("counter")
                acked += 1
            except aioredis.RedisError as exc:
                failures.append(exc)
            await asyncio.sleep(0.01)  # a steady writer, not a busy loop

    writer = asyncio.create_task(write_on())
    try:
        await wait_until(lambda: acked >= 10)
        frozen.send_signal(signal.SIGSTOP)
        new = await new_primary(sentinels, old)
        at_switch = acked
        await wait_until(lambda: acked >= at_switch + 10)
        done.set()
        await writer
        assert len(failures) <= 1, failures
        assert all(isinstance(f, aioredis.TimeoutError) for f in failures), failures
        async with aioredis.Redis(port=new) as promoted:
            assert int(await promoted.get("counter")) == acked
    finally:
        done.set()
        frozen.send_signal(signal.SIGCONT)
        await client.aclose()
