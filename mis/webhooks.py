"""Webhooks to the MIS: a durable outbox in Redis, signed deliveries, retries in order.

Events are written to Redis before anything is sent, so a crash between an event and its
delivery loses nothing. Each endpoint has its own queue, delivered strictly in order: a
receiver that is down holds back later events (with exponential backoff up to a cap)
rather than receiving them out of order. Several nodes deliver from the same queues: a
delivery is claimed atomically by one of them, its claim renewed while its request is in
flight, and its outcome booked only if the claim still holds (docs/api.md, "Several
nodes"). Delivery is at-least-once (a node that dies mid-request leaves its event to be
sent again); receivers deduplicate by the event id.

Signature: `X-Telemed-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from mis.redis_scripts import OUTBOX_BOOK, OUTBOX_CLAIM, OUTBOX_RENEW
from signaling.events import CallEvent

__all__ = ["EVENTS", "Endpoint", "Outbox", "as_text", "backoff", "parse_endpoint", "sign",
           "verify_signature"]

log = logging.getLogger(__name__)

#: What the MIS can subscribe to: every call event, and the recordings' verdicts.
EVENTS = (*(event.value for event in CallEvent), "recording.ready", "recording.failed")
PREFIX = "telemed:webhooks:"
LOG_LIMIT = 50
#: Events and their delivery logs stay readable this long (an endpoint down for longer
#: loses them: its queue skips events that are gone).
EVENT_TTL = 30 * 86400
ENQUEUE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then return 0 end
local n = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], n, ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], n, ARGV[2]) end
return n
"""
#: Events of a call, in order, for the MIS to find ones it never received.
CALL_EVENTS = 50


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Endpoint:
    url: str
    patterns: tuple[str, ...] = ("*",)

    @property
    def key(self) -> str:
        """Stable across restarts, so a queue survives them."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def wants(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, p) for p in self.patterns)


def parse_endpoint(entry: str) -> Endpoint:
    """`URL [event-pattern ...]`."""
    url, *patterns = entry.split()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    for p in patterns:
        if not any(fnmatch.fnmatchcase(e, p) for e in EVENTS):
            raise ValueError(f"{p!r} matches no event (events: {', '.join(EVENTS)})")
    return Endpoint(url, tuple(patterns) or ("*",))


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay after the `attempts`-th failure in a row: base, 2 base, 4 base... up to cap."""
    return float(min(cap, base * 2 ** min(attempts - 1, 64)))


def sign(secret: str, body: bytes, now: float) -> str:
    t = int(now)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, *, now: float,
                     tolerance: float = 300.0) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class Outbox:
    """Queues events durably and delivers them; one delivery loop per endpoint."""

    def __init__(self, redis: aioredis.Redis, endpoints: list[Endpoint], secret: str, *,
                 timeout: float = 10.0, retry_base: float = 1.0, retry_cap: float = 300.0,
                 claim_timeout: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.endpoints = endpoints
        self.secret = secret
        self.timeout = timeout
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.claim_timeout = claim_timeout
        self.clock = clock
        self._wake = {e.key: asyncio.Event() for e in endpoints}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._http: aiohttp.ClientSession | None = None
        self._enqueue = redis.register_script(ENQUEUE)
        self._claim = redis.register_script(OUTBOX_CLAIM)
        self._renew = redis.register_script(OUTBOX_RENEW)
        self._book = redis.register_script(OUTBOX_BOOK)

    # ------------------------------------------------------------------ queueing

    async def publish(self, event: str, data: dict[str, Any], *, event_id: str | None = None,
                      at: float | None = None) -> str:
        """Stores the event and queues it for every endpoint that wants it; returns its id.

        Publishing an id that is already stored does nothing, so a replayed event (from
        the sink's journal after a crash) is delivered once."""
        event_id = event_id or uuid.uuid4().hex
        body = {"id": event_id, "event": event, "time": at if at is not None else self.clock(),
                "data": data}
        wanting = [e for e in self.endpoints if e.wants(event)]
        # One script: the event and its place in every queue are stored together or not at
        # all, numbered by a global sequence so each queue keeps the order events happened in.
        call_id = (data.get("call") or {}).get("id") or "-"
        await self._enqueue(keys=[f"{PREFIX}event:{event_id}", f"{PREFIX}seq",
                                  f"{PREFIX}call:{call_id}",
                                  *(f"{PREFIX}queue:{e.key}" for e in wanting)],
                            args=[json.dumps(body, separators=(",", ":")), event_id,
                                  EVENT_TTL])
        for endpoint in wanting:
            self._wake[endpoint.key].set()
        return event_id

    async def event(self, event_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"{PREFIX}event:{event_id}")
        if raw is None:
            return None
        body: dict[str, Any] = json.loads(raw)
        deliveries = await self.redis.lrange(f"{PREFIX}log:{event_id}", 0, -1)
        pending = [e.url for e in self.endpoints
                   if await self.redis.zscore(f"{PREFIX}queue:{e.key}", event_id) is not None]
        return {**body, "deliveries": [json.loads(d) for d in deliveries], "pending": pending}

    async def events_of(self, call_id: str) -> list[dict[str, Any]]:
        """A call's events (the latest CALL_EVENTS), oldest first, with delivery logs."""
        ids = await self.redis.zrange(f"{PREFIX}call:{call_id}", -CALL_EVENTS, -1)
        found = [await self.event(as_text(i)) for i in ids]
        return [e for e in found if e is not None]

    async def pending(self) -> int:
        counts = [await self.redis.zcard(f"{PREFIX}queue:{e.key}") for e in self.endpoints]
        return sum(counts)

    # ------------------------------------------------------------------ delivery

    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._tasks = [asyncio.create_task(self._deliver_loop(e), name=f"webhooks {e.url}")
                       for e in self.endpoints]

    async def close(self) -> None:
        # The flag as well as the cancel: a cancellation that lands as a wait or a Redis
        # reply completes can be swallowed below us, and the loop must still end.
        self._closed = True
        for wake in self._wake.values():
            wake.set()
        # A delivery in flight finishes and is booked first: cancelled after the receiver
        # took it but before we recorded that, it would be sent again after the restart.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout + 1.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()

    async def _deliver_loop(self, endpoint: Endpoint) -> None:
        queue = f"{PREFIX}queue:{endpoint.key}"
        state = f"{PREFIX}state:{endpoint.key}"
        wake = self._wake[endpoint.key]
        while not self._closed:
            try:
                delay = await self._deliver_next(endpoint, queue, state)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("! webhook outbox unavailable: %s", type(exc).__name__)
                delay = self.retry_base
            if delay is None or self._closed:
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    async def _deliver_next(self, endpoint: Endpoint, queue: str, state: str) -> float | None:
        """Delivers the oldest queued event; returns how long to wait, None to go on."""
        token = uuid.uuid4().hex
        reply = await self._claim(keys=[queue, state],
                                  args=[repr(self.clock()), self.claim_timeout, token,
                                        f"{PREFIX}event:"])
        match int(reply[0]):
            case 0:  # empty: a publish here wakes us; one on another node, at the latest this
                return self.claim_timeout
            case 1:  # another delivery holds it, or it waits out a retry delay
                return max(0.0, float(reply[1]))
            case 2:  # expired or removed by hand: nothing to deliver
                return None
        event_id, attempts, raw = as_text(reply[1]), int(reply[2]), reply[3]
        posted = asyncio.Event()
        renewing = asyncio.create_task(self._renew_claim(state, token, event_id, posted))
        try:
            status, error = await self._post(endpoint, event_id,
                                             raw if isinstance(raw, bytes) else raw.encode())
        finally:
            posted.set()
            await asyncio.wait({renewing})
        attempts += 1
        record = {"url": endpoint.url, "at": self.clock(), "attempt": attempts,
                  "status": status, "error": error}
        log_key = f"{PREFIX}log:{event_id}"
        ok = status is not None and 200 <= status < 300
        delay = 0.0 if ok else backoff(attempts, self.retry_base, self.retry_cap)
        booked = await self._book(keys=[state, queue, log_key],
                                  args=[token, event_id, json.dumps(record), int(ok),
                                        attempts, repr(self.clock() + delay), LOG_LIMIT,
                                        EVENT_TTL, json.dumps({**record, "claimLost": True})])
        if not booked:
            # Frozen past the claim: another delivery owns the event now and books it.
            log.warning("! webhook %s to %s: claim lost during delivery (%s); not booked",
                        event_id, endpoint.url, error or status)
            return None
        if ok:
            return None
        log.warning("! webhook %s to %s failed (%s); retry %d in %.1fs", event_id,
                    endpoint.url, error or status, attempts, delay)
        return float(delay)

    async def _renew_claim(self, state: str, token: str, event_id: str,
                           posted: asyncio.Event) -> None:
        """Keeps the claim until `posted`, so that claim_timeout bounds how long a dead
        node's delivery holds the queue, not how long a request may take. Stopped by an
        event, not a cancel, which redis-py can swallow as a reply arrives."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(posted.wait(), self.claim_timeout / 3)
            if posted.is_set():
                return
            try:
                held = await self._renew(keys=[state],
                                         args=[token, repr(self.clock() + self.claim_timeout)])
            except (aioredis.RedisError, OSError):
                continue  # the claim may still run out; booking then finds that
            if not held:
                log.warning("! webhook %s: claim taken over while delivering", event_id)
                return

    async def _post(self, endpoint: Endpoint, event_id: str, raw: bytes
                    ) -> tuple[int | None, str | None]:
        assert self._http is not None
        body = json.loads(raw)
        headers = {"Content-Type": "application/json", "X-Telemed-Event": body["event"],
                   "X-Telemed-Event-Id": event_id,
                   "X-Telemed-Signature": sign(self.secret, raw, self.clock())}
        try:
            # A redirect is a failure: the signed body goes only where it was configured to.
            async with self._http.post(endpoint.url, data=raw, headers=headers,
                                       allow_redirects=False) as response:
                return response.status, None if response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, type(exc).__name__


OUTBOX = web.AppKey("outbox", Outbox)
