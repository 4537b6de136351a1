"""The aiohttp application: health endpoints now, the hub, API and pages as they land."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from cluster.node import Cluster
from kurento_ctl.pool import KurentoPool
from kurento_ctl.sweep import OrphanSweeper
from mis.api import API, API_CONFIG, REDIS, ApiConfig, setup_api
from mis.clients import parse_networks
from mis.history import SINK, STORE, CallStore, EventSink, snapshot
from mis.webhooks import OUTBOX, Outbox, parse_endpoint
from mis.workstation_links import setup_workstation_links
from recordings.catalog import Catalog
from recordings.http import (
    CATALOG,
    PAGE_CONTEXT,
    RECORDINGS_CONFIG,
    RecordingsConfig,
    setup_recordings,
)
from recordings.retention import purge_alone
from recordings.worker import RecordingWorker
from signaling.call import Call, FailureReason
from signaling.hub import HUB, Hub
from signaling.session import SESSION_CONFIG, SessionConfig, websocket_handler
from telemed import redis_client
from telemed.embedded import Endpoints
from telemed.health import ENDPOINTS, HTTP, SUPERVISOR, healthz, metrics, readyz
from telemed.orphans import finalize_released, live_calls, sweep_turn
from telemed.recovery import (
    hold_places,
    recover_unfinished,
    run_expiry,
    take_over_unfinished,
)
from telemed.settings import Settings, read_public_key
from telemed.supervisor import Supervisor
from turn.lease import TurnProvider
from turn.pool import TurnPool
from turn.providers.coturn import CoturnRedisUserDb, CoturnSharedSecret
from turn.providers.return_users import ReturnUsersFile
from web import setup_web
from web.config import WEB_CONFIG, WebConfig
from web.context import page_context

__all__ = ["create_app"]

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", KurentoPool)
SWEEPER = web.AppKey("sweeper", OrphanSweeper)
RECORDINGS = web.AppKey("recordings", RecordingWorker)
CLUSTER = web.AppKey("cluster", Cluster)

Check = Callable[[], Awaitable[dict[str, Any]]]
#: s; a media server slower than this to list its pipelines leaves its orphans to the
#: periodic sweep rather than hold up the start.
STARTUP_SWEEP_BOUND = 30.0


def create_app(
    settings: Settings, endpoints: Endpoints, *, supervisor: Supervisor | None = None
) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[ENDPOINTS] = endpoints
    if supervisor is not None:
        app[SUPERVISOR] = supervisor

    app[SESSION_CONFIG] = SessionConfig(
        jwt_keys=[endpoints.jwt_secret,
                  *(read_public_key(path) for path in settings.auth.jwt_public_keys)],
        issuer=settings.auth.jwt_issuer,
        audience=settings.auth.jwt_audience, allowed_origins=allowed_origins(settings),
        max_message=settings.http.max_frame_bytes, heartbeat=settings.http.ws_heartbeat,
        rate=settings.http.ws_rate, burst=settings.http.ws_burst)
    app[API_CONFIG] = ApiConfig(
        api_key_hashes=tuple(endpoints.api_key_hashes), jwt_secret=endpoints.jwt_secret,
        jwt_issuer=settings.auth.jwt_issuer, jwt_audience=settings.auth.jwt_audience,
        token_ttl=settings.auth.token_ttl, public_url=settings.public_url,
        schedule_overrun=settings.calls.schedule_overrun,
        redis_timeout=settings.redis.timeout,
        trusted_proxies=parse_networks(settings.http.trusted_proxies),
        rate_per_minute=settings.http.api_rate)
    app[WEB_CONFIG] = WebConfig(language=settings.http.language, host=settings.http.host,
                                demo=settings.http.demo,
                                rejoin_grace=settings.calls.rejoin_grace,
                                frame_ancestors=settings.http.frame_ancestors,
                                time_zone=settings.http.time_zone)
    app[RECORDINGS_CONFIG] = RecordingsConfig(
        secret=endpoints.jwt_secret, public_url=settings.public_url,
        retention_days=settings.recordings.retention_days)
    app[PAGE_CONTEXT] = page_context
    # Bounded so that a Redis that hangs fails commands instead of holding requests.
    redis = app[REDIS] = redis_client.connect(endpoints.redis_url,
                                              timeout=settings.redis.timeout,
                                              failover_wait=settings.redis.failover_wait)
    turn = build_turn(settings, endpoints, redis)
    pool = KurentoPool(endpoints.kurento_urls, health_interval=settings.media.health_interval,
                       down_after=settings.media.down_after,
                       sockets=settings.media.sockets_per_server,
                       node_id=settings.node_id)
    app[POOL] = pool
    store = CallStore(redis)
    hub = app[HUB] = Hub(repository=store, pool=pool, recordings_root=settings.recordings_path,
                   watchdog_timeout=settings.calls.watchdog_timeout,
                   turn=turn,
                   max_conference_size=settings.calls.max_conference_size,
                   ring_timeout=settings.calls.ring_timeout,
                   rejoin_grace=settings.calls.rejoin_grace,
                   media_loss_report=settings.calls.media_loss_report,
                   min_free_bytes=settings.recordings.min_free_bytes)
    cluster = app[CLUSTER] = Cluster(redis, hub, store, app[SESSION_CONFIG],
                                     ttl=settings.node.heartbeat_ttl,
                                     adopt=settings.calls.take_over)
    cluster.attach()
    sweeper = app[SWEEPER] = OrphanSweeper(pool, live_calls(store, hub),
                                           interval=settings.media.sweep_interval,
                                           min_age=settings.media.sweep_grace,
                                           gate=sweep_turn(redis, settings.media.sweep_interval))

    async def clients(app: web.Application) -> AsyncIterator[None]:
        app[HTTP] = aiohttp.ClientSession()
        app[STORE] = store
        hooks = settings.webhooks
        outbox = None
        if hooks.endpoints:
            outbox = app[OUTBOX] = Outbox(
                redis, [parse_endpoint(e) for e in hooks.endpoints], hooks.secret,
                timeout=hooks.timeout, retry_base=hooks.retry_base, retry_cap=hooks.retry_cap,
                claim_timeout=hooks.claim_timeout)
            outbox.start()
        heartbeat = cluster.lease
        settings.data_path.mkdir(parents=True, exist_ok=True)
        settings.data_path.chmod(0o700)  # secrets and the call-events journal
        sink = app[SINK] = EventSink(store, outbox,
                                     journal=settings.data_path / "call-events.journal")
        # What a previous run journalled but never got into Redis goes first, so that the
        # calls it left unfinished are judged on their last known state.
        replayed = sink.replay()
        sink.start()
        if replayed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.settle(), 10.0)
        with contextlib.suppress(aioredis.RedisError, OSError):
            await heartbeat.beat()  # before judging others: we are alive too
            await recover_unfinished(store, outbox, turn, take_over=settings.calls.take_over,
                                     orphaned=heartbeat.orphaned)
        await cluster.start()
        cluster.before_release.append(sink.settle)
        app[HUB].hooks.append(sink)
        catalog = app[CATALOG] = Catalog(settings.recordings_path, redis)

        async def publish(event: str, data: dict[str, Any], event_id: str) -> None:
            if outbox is not None:
                await outbox.publish(event, data, event_id=event_id)

        rec = settings.recordings
        worker = app[RECORDINGS] = RecordingWorker(catalog, publish, workers=rec.workers,
                                                   queue_size=rec.queue_size,
                                                   compose_files=rec.compose)
        worker.start()

        def on_call_over(event: str, call: Call, data: dict[str, Any]) -> None:
            paths = data.get("recordings") or []
            if event in ("call.ended", "call.failed") and paths:
                snap = snapshot(call)
                snap["recordings"] = [Path(p).name for p in paths]
                # Taken over but its media gone: the media server, not a stop, ended the
                # files, as after any crash.
                recovered = call.taken_over_from_record \
                    and call.failure is FailureReason.MEDIA_SERVER_LOST
                worker.submit(Path(paths[0]).parent, snap, recovered=recovered)

        app[HUB].hooks.append(on_call_over)
        await pool.start()
        taken: list[str] = []
        if settings.calls.take_over:
            # Before the sockets open: a browser coming back must find its call running.
            # Before the sweep: a call whose takeover fails is finished, its pipeline an
            # orphan the sweep then releases.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.wait_up(), settings.media.down_after)
            with contextlib.suppress(aioredis.RedisError, OSError):
                if taken := await take_over_unfinished(app[HUB], store, heartbeat.orphaned,
                                                       place=cluster.place):
                    log.warning("! took over %d calls a previous run left live", len(taken))
        # After recover_unfinished (the calls it failed are finished: their pipelines are
        # orphans) and before the scan: released recorders close their files, which the
        # scan then finds whole instead of cut off.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sweeper.sweep(), STARTUP_SWEEP_BOUND)
        sweeper.on_released = finalize_released(worker, catalog, store)
        sweeper.start_periodic()
        with contextlib.suppress(aioredis.RedisError, OSError):
            if found := await worker.scan(store.get):
                log.warning("! %d calls' recordings left unfinalized by a previous run "
                            "queued", found)
        housekeeping = asyncio.create_task(_retention(settings, catalog))
        renewals = asyncio.create_task(turn.run_renewals()) if turn is not None else None
        calls = settings.calls
        expiry = asyncio.create_task(run_expiry(
            app[HUB], store, turn, interval=calls.expiry_interval,
            overrun=calls.schedule_overrun, idle=calls.idle_expiry, clock=time.time))
        # Last before the sockets open: their participants' grace counts from now.
        hold_places(app[HUB], taken)
        cluster.start_adopting()
        yield
        try:
            if not app[HUB].suspended:
                await app[HUB].shutdown()
            await cluster.close()
            await sink.flush(timeout=10.0)  # Redis away: the journal keeps the rest
            await _drain(worker, settings.recordings.drain_timeout)
        finally:
            housekeeping.cancel()
            expiry.cancel()
            if renewals is not None:
                renewals.cancel()
            await worker.close()
            if outbox is not None:
                await outbox.close()
            await sweeper.close()
            await pool.close()
            await app[HTTP].close()
            with contextlib.suppress(aioredis.RedisError, OSError):
                await app[REDIS].aclose()
                # coturn-redis may read its user DB from a Redis of its own.
                if turn is not None and isinstance(turn.provider, CoturnRedisUserDb) \
                        and turn.provider.redis is not redis:
                    await turn.provider.redis.aclose()

    app.cleanup_ctx.append(clients)

    async def stopping(app: web.Application) -> None:
        # Before aiohttp waits for open sockets to finish: the participants hear it now,
        # not when the sockets time out.
        if settings.calls.take_over and app[HUB].keep_calls_on_stop:
            await app[HUB].suspend()
        else:
            await app[HUB].shutdown()

    app.on_shutdown.append(stopping)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ws", websocket_handler)
    app[API] = setup_api(app)
    setup_workstation_links(app)
    setup_recordings(app)
    setup_web(app)
    return app


async def _drain(worker: RecordingWorker, timeout: float) -> None:
    """At shutdown, lets queued recordings finish; whatever is left, the next start-up scan
    finalizes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not worker.queue.empty() or worker.busy:
                await worker.idle.wait()


async def _retention(settings: Settings, catalog: Catalog) -> None:
    days = settings.recordings.retention_days
    if days <= 0:
        return
    while True:
        now = time.time()
        try:
            # Every node wakes hourly; one purges at a time, the others skip this hour.
            await purge_alone(catalog, catalog.redis, older_than=now - days * 86400, now=now)
        except (aioredis.RedisError, OSError) as exc:
            log.error("! retention run failed: %s", type(exc).__name__)
        await asyncio.sleep(3600)


def build_turn(settings: Settings, endpoints: Endpoints, redis: aioredis.Redis
               ) -> TurnPool | None:
    """The TURN lease pool for the configured provider, or None (`none`, or no coturn)."""
    cfg = settings.turn
    provider: TurnProvider
    if cfg.provider == "none" or not endpoints.turn_urls:
        return None
    if cfg.provider in ("embedded", "coturn-secret"):
        provider = CoturnSharedSecret(endpoints.turn_secrets, endpoints.turn_urls)
    elif cfg.provider == "coturn-redis":
        userdb = redis_client.connect(cfg.redis_url) if cfg.redis_url else redis
        provider = CoturnRedisUserDb(userdb, cfg.realm, endpoints.turn_urls)
    else:
        provider = ReturnUsersFile(settings.turn_users_file, cfg.realm, endpoints.turn_urls,
                                   size=cfg.pool_size, hashed=cfg.return_hashed,
                                   pid_file=Path(cfg.return_pid_file)
                                   if cfg.return_pid_file else None)
    return TurnPool(redis, provider, size=cfg.pool_size, ttl=cfg.lease_ttl,
                    namespace=cfg.provider)


def allowed_origins(settings: Settings) -> set[str]:
    if settings.http.allowed_origins:
        return {o.rstrip("/") for o in settings.http.allowed_origins}
    origins = {settings.public_url}
    if not settings.http.public_url:
        # The embedded default is reached as either name of the loopback host.
        origins |= {f"http://127.0.0.1:{settings.http.port}",
                    f"http://localhost:{settings.http.port}"}
    return origins
