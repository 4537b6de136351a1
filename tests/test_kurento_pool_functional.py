"""KurentoPool over two scripted media servers: placement, loss, failover and recovery."""

from __future__ import annotations

import contextlib

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import MediaPipeline
from kurento_ctl.pool import KurentoPool, NoMediaServer
from tests.helpers import scaled, wait_until
from tests.kurento_fixtures import run_scripted_kms
from tests.services import free_port


async def test_pipelines_go_to_the_least_loaded_server() -> None:
    """Others' pipelines count too, seen through the manager's ObjectCreated events."""
    async with run_scripted_kms() as (url_a, kms_a), run_scripted_kms() as (url_b, kms_b):
        pool = KurentoPool([url_a, url_b], health_interval=scaled(10))
        await pool.start()
        try:
            await pool.check()
            async with KurentoClient(url_a) as someone_else:
                for _ in range(2):
                    await MediaPipeline.create(someone_else)
            await wait_until(lambda: pool.status()[url_a]["load"] == 2,
                             describe=lambda: pool.status())
            placed = [(await pool.create_pipeline())[0].url for _ in range(2)]
            assert placed == [url_b, url_b]
            assert pool.status()[url_b]["pipelines"] == 2
            assert pool.status()[url_a]["load"] == 2
        finally:
            await pool.close()
        assert kms_a.violations == kms_b.violations == []


async def test_a_server_that_goes_away_reports_its_pipelines_lost_and_comes_back() -> None:
    """A server that goes away reports its pipelines lost once and gets no new ones until back."""
    port_b = free_port()
    async with run_scripted_kms() as (url_a, _):
        stack = contextlib.AsyncExitStack()
        url_b, kms_b = await stack.enter_async_context(run_scripted_kms(port_b))
        pool = KurentoPool([url_a, url_b], health_interval=scaled(10), down_after=0.0)
        lost: list[tuple[str, set[str]]] = []
        pool.on_pipelines_lost(lambda url, ids: lost.append((url, ids)))
        await pool.start()
        try:
            kms_b.objects.clear()  # nothing else on B: A looks busier once it holds ours
            server_a, on_a = await pool.create_pipeline()
            server_b, on_b = await pool.create_pipeline()
            assert {server_a.url, server_b.url} == {url_a, url_b}
            b_pipeline = on_b if server_b.url == url_b else on_a
            await stack.aclose()  # B stops answering
            await wait_until(lambda: not pool.servers[1].client.connected)
            await pool.check()
            assert lost == [(url_b, {b_pipeline.id})]
            assert not pool.status()[url_b]["up"]
            for _ in range(2):
                assert (await pool.create_pipeline())[0].url == url_a

            async with run_scripted_kms(port_b):
                # Every socket of B is back (each found its session forgotten) before the
                # health round that brings B up, so no late reconnect can race it.
                await wait_until(lambda: all(c.connected for c in pool.servers[1].all_clients),
                                 describe=lambda: pool.status())
                await pool.check()
                assert pool.status()[url_b]["up"]
                assert lost == [(url_b, {b_pipeline.id})], "a restart reported nothing new"
        finally:
            await pool.close()


async def test_a_server_whose_probes_go_unanswered_is_down_until_it_answers_again() -> None:
    """A server is down after its second unanswered probe, not its first, and up once it answers."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(60), check_timeout=scaled(0.2),
                           failures_to_down=2)
        lost: list[set[str]] = []
        pool.on_pipelines_lost(lambda _url, ids: lost.append(ids))
        await pool.start()
        try:
            await pool.check()
            _, pipeline = await pool.create_pipeline()
            kms.silent = True  # the socket stays open; nothing is answered
            await pool.check()
            assert pool.status()[url]["up"] and lost == [], "one slow probe is not an outage"
            await pool.check()
            assert not pool.status()[url]["up"] and lost == [{pipeline.id}]
            with pytest.raises(NoMediaServer):
                pool.pick()
            kms.silent = False
            await pool.check()
            assert pool.status()[url]["up"]
            assert pool.pick() is pool.servers[0]
        finally:
            await pool.close()


async def test_no_reachable_server_is_a_clear_error() -> None:
    """With no reachable media server, creating a pipeline raises NoMediaServer."""
    pool = KurentoPool([f"ws://127.0.0.1:{free_port()}/kurento"], health_interval=scaled(10))
    await pool.start()
    try:
        with pytest.raises(NoMediaServer):
            await pool.create_pipeline()
    finally:
        await pool.close()


async def test_a_restarted_server_reports_lost_pipelines_at_once() -> None:
    """A restarted server's pipelines are reported lost as soon as it reconnects."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(10))
        lost: list[tuple[str, set[str]]] = []
        pool.on_pipelines_lost(lambda u, ids: lost.append((u, ids)))
        await pool.start()
        try:
            pool.servers[0].client.reconnect_delays = (0.01,)
            _, pipeline = await pool.create_pipeline()
            kms.restart()
            await kms.drop_connections()
            await wait_until(lambda: lost, describe=lambda: pool.status())
            assert lost == [(url, {pipeline.id})]
        finally:
            await pool.close()


async def test_a_restarted_server_stays_up_and_each_socket_reports_only_its_pipelines() -> None:
    """After a restart each socket reports only its own pipelines lost, and the server stays up."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(10), sockets=2)
        lost: list[set[str]] = []
        pool.on_pipelines_lost(lambda _url, ids: lost.append(ids))
        await pool.start()
        try:
            server = pool.servers[0]
            first, second = server.call_clients
            for client in server.all_clients:
                client.reconnect_delays = (0.01,)
            second.reconnect_delays = (scaled(60),)  # stays away for the whole test
            placed = [(await pool.create_pipeline())[1] for _ in range(2)]
            on_first = {p.id for p in placed if p.client is first}
            on_second = {p.id for p in placed if p.client is second}
            assert on_first and on_second
            kms.restart()
            await kms.drop_connections()
            await wait_until(lambda: first.connected and server.client.connected,
                             describe=lambda: pool.status())
            assert lost == [on_first]
            # It answered after the restart: usable at once, no health round needed.
            assert pool.status()[url]["up"]
            _, fresh = await pool.create_pipeline()
            assert fresh.client is first and fresh.id in server.pipelines
            assert on_second <= server.pipelines, "lost before its own socket found out"
        finally:
            await pool.close()


async def test_pipelines_spread_over_call_sockets_and_probes_use_their_own() -> None:
    """Pipelines spread evenly over call sockets; probes use their own, never getPipelines."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(10), sockets=3)
        await pool.start()
        try:
            await pool.check()
            server = pool.servers[0]
            assert pool.status()[url]["sockets"] == 4
            for _ in range(6):
                await pool.create_pipeline()
            await pool.check()
        finally:
            await pool.close()
        probe = server.client.session_id
        call_sessions = {c.session_id for c in server.call_clients}
        assert len(call_sessions | {probe}) == 4
        creates = [p.get("sessionId") for _, m, p in kms.requests if m == "create"]
        assert sorted(creates.count(s) for s in call_sessions) == [2, 2, 2]
        assert probe not in creates
        probes = [p.get("sessionId") for _, m, p in kms.requests
                  if m == "invoke" and p.get("operation") == "getUsedMemory"]
        assert probes and set(probes) == {probe}
        # On KMS getPipelines makes an internal session own every object: no GC, ever.
        assert not [p for _, m, p in kms.requests if p.get("operation") == "getPipelines"]
        assert kms.violations == []


async def test_pipelines_lost_while_unreachable_are_released_when_the_same_server_answers(
) -> None:
    """Our "down" verdict does not stop the server: same serverId back, we release them."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(60), check_timeout=scaled(0.2),
                           failures_to_down=1)
        lost: list[set[str]] = []
        pool.on_pipelines_lost(lambda _url, ids: lost.append(ids))
        await pool.start()
        try:
            await pool.check()
            _, pipeline = await pool.create_pipeline()
            kms.silent = True
            await pool.check()
            assert lost == [{pipeline.id}] and pipeline.id in kms.objects
            kms.silent = False
            await pool.check()
            await wait_until(lambda: pipeline.id not in kms.objects,
                             describe=lambda: pool.servers[0].orphans)
            assert not pool.servers[0].orphans
        finally:
            await pool.close()


async def test_pipelines_lost_to_a_restart_are_not_released() -> None:
    """A new serverId: the objects died with the old process; nothing is asked of it."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(60), check_timeout=scaled(0.2),
                           failures_to_down=1)
        await pool.start()
        try:
            await pool.check()
            await pool.create_pipeline()
            kms.silent = True
            await pool.check()
            kms.silent = False
            kms.restart()
            for client in pool.servers[0].all_clients:
                client.reconnect_delays = (0.01,)
            await kms.drop_connections()
            await wait_until(lambda: all(c.connected for c in pool.servers[0].all_clients))
            await pool.check()
            assert not pool.servers[0].orphans
            assert not [p for _, m, p in kms.requests if m == "release"]
        finally:
            await pool.close()


async def test_a_session_the_same_server_forgot_has_its_pipelines_released() -> None:
    """40007 and an unchanged serverId: reported lost, and released, not left running."""
    async with run_scripted_kms() as (url, kms):
        pool = KurentoPool([url], health_interval=scaled(60))
        lost: list[set[str]] = []
        pool.on_pipelines_lost(lambda _url, ids: lost.append(ids))
        await pool.start()
        try:
            for client in pool.servers[0].all_clients:
                client.reconnect_delays = (0.01,)
            _, pipeline = await pool.create_pipeline()
            kms.sessions.clear()
            await kms.drop_connections()
            await wait_until(lambda: lost and pipeline.id not in kms.objects,
                             describe=lambda: (lost, list(kms.objects)))
            assert lost == [{pipeline.id}]
        finally:
            await pool.close()
