"""The one place the process makes its Redis clients: a plain `redis://`, `rediss://` or
`unix://` URL, or `redis+sentinel://` for a primary that Redis Sentinel watches and fails
over (docs/deployment.md, Redis Sentinel).

`redis+sentinel://[:password@]host1[:port1],host2[:port2]/<service_name>[/<db>]
[?sentinel_password=...]`: the sentinels (port 26379 when left out), the name they monitor
the primary under (their `sentinel monitor <name> ...`) and the database. The password is
the primary's (and its replicas'); `sentinel_password` is for the sentinels themselves when
they ask for one.

redis-py's Sentinel support does the failover work: a new connection asks the sentinels
where the primary is now, and a connection that meets a demoted primary (READONLY) is
dropped. What we add is that a command which fails that way (the primary gone or read-only)
is tried again, reconnecting through the sentinels each time, for up to `failover_wait`,
so that a failover is a pause rather than an error. A primary that cannot be reached within
`timeout` counts as gone. A command whose reply times out on an open connection is not tried
again: a Redis that hangs still costs one `timeout` (the API's fast 503), never several.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    ExternalAuthProviderError,
    MaxConnectionsError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["SENTINEL_SCHEME", "SentinelTarget", "check_url", "connect", "parse_sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
#: Pause between tries while the primary is away: short, so a client reaches the new
#: primary soon after the sentinels name it; capped, so that waiting costs little CPU.
RETRY_BASE, RETRY_CAP = 0.02, 0.25
#: s; how stale the pool's idea of where the primary is may get while commands flow, and
#: the longest a command waits for the sentinels to confirm it.
CHECK_EVERY, CHECK_BOUND = 0.5, 0.25

#: ConnectionErrors a failover does not cause, nor cure: a wrong password fails at once.
NOT_FAILOVERS = (AuthenticationError, AuthorizationError, ExternalAuthProviderError,
                 MaxConnectionsError)

T = TypeVar("T")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def _masked(url: str) -> str:
    """`url` fit for an error message: its passwords replaced."""
    url = re.sub(r"//[^@/]*@", "//***@", url, count=1)
    return re.sub(r"(sentinel_password=)[^&]*", r"\1***", url)


def _host_port(part: str, url: str) -> tuple[str, int]:
    if part.startswith("["):  # an IPv6 address: [::1]:26379
        host, _, rest = part[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{url!r}: bad sentinel address {part!r}")
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"{url!r}: a sentinel address has no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{url!r}: bad sentinel port {port_text!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, service name and database a `redis+sentinel://` URL names, or
    ValueError saying what is wrong."""
    prefix = f"{SENTINEL_SCHEME}://"
    shown = _masked(url)
    if not url.startswith(prefix):
        raise ValueError(f"{shown!r} is not a {prefix} URL")
    rest, _, query = url[len(prefix):].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    password = None
    if at:
        # `:password@`, as in redis:// URLs; a user name is not supported by our Sentinel use.
        user, colon, secret = userinfo.partition(":")
        if user or not colon:
            raise ValueError(f"{shown!r}: give the password as :password@ (no user name)")
        password = unquote(secret) or None
    sentinels = tuple(_host_port(p.strip(), shown) for p in hosts.split(",") if p.strip())
    if not sentinels:
        raise ValueError(f"{shown!r}: no sentinel addresses")
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise ValueError(f"{shown!r}: no service name (redis+sentinel://hosts/<service_name>)")
    if db_text and not db_text.isdigit():
        raise ValueError(f"{shown!r}: the database must be a number, got {db_text!r}")
    options = parse_qs(query, keep_blank_values=True)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"{shown!r}: unknown option(s) {', '.join(sorted(unknown))}")
    sentinel_password = options.get("sentinel_password", [""])[-1] or None
    return SentinelTarget(sentinels, unquote(service), int(db_text or 0), password,
                          sentinel_password)


def check_url(url: str) -> None:
    """ValueError unless `url` is a Redis URL the service can use (empty: embedded)."""
    if url.startswith(f"{SENTINEL_SCHEME}:"):
        parse_sentinel_url(url)
    elif url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{_masked(url)!r}: expected redis://, rediss://, unix:// or "
                         f"{SENTINEL_SCHEME}://")


class FailoverRetry(Retry):
    """Tries a command again while it fails because the primary is gone or demoted, for at
    most `budget` seconds from its first try (redis-py's own Retry counts tries, and a
    count cannot say how long a failover may take)."""

    def __init__(self, budget: float) -> None:
        super().__init__(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries=-1,
                         supported_errors=(ConnectionError, ReadOnlyError))
        self.budget = budget

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        deadline = time.monotonic() + self.budget

        def retryable(error: Exception) -> bool:
            return (time.monotonic() < deadline and not isinstance(error, NOT_FAILOVERS)
                    and (is_retryable is None or is_retryable(error)))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, FailoverRetry) and other.budget == self.budget \
            and super().__eq__(other)

    __hash__ = Retry.__hash__


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is on every reconnect.

    redis-py's own asks only when the pool hands a connection out: a command retried on
    the same connection reconnects to the address it had, the dead primary's, until the
    retries run out (redis-py issue #3874, open)."""

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        # `connect_to`, which the sentinel-aware `connect` ends in, passes False: that call
        # has just been given the primary's address and goes on to open the socket.
        if retry_socket_connect and not self.is_connected and self.connection_pool.is_master:
            await self.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            return
        await super().connect_check_health(check_health, retry_socket_connect)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            # A primary whose replicas left it (min-replicas-to-write): most likely one of
            # them was promoted. Like READONLY: ask the sentinels again.
            if not str(exc).startswith("NOREPLICAS") or not self.connection_pool.is_master:
                raise
            await self.disconnect()
            raise ConnectionError(f"the primary refuses writes: {exc}") from exc

    async def connect_to(self, address: tuple[str, int]) -> None:
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        except RedisTimeoutError as exc:
            # A primary whose host died drops the handshake rather than refusing it: that
            # is a primary gone (retried, through the sentinels), not a hung command.
            raise ConnectionError(f"primary at {address[0]}:{address[1]}: {exc}") from exc


class PrimaryPool(SentinelConnectionPool):
    """Hands out connections to the primary the sentinels name now.

    redis-py's pool asks the sentinels only when it opens a connection, and reuses an open
    one whatever happened since. After a planned failover (SENTINEL FAILOVER, or a network
    cut the sentinels saw) the former primary keeps answering, and accepting writes, until
    the sentinels get round to demoting it, seconds later; what it accepted then is wiped
    when it resyncs from the new primary. So: when it last asked more than CHECK_EVERY ago,
    the pool asks the sentinels before handing a connection out, and a connection to
    another address is reconnected before it is used. (What is written in the moments
    between the replica's promotion and the sentinels' announcing it can still reach the
    former primary: `min-replicas-to-write` closes that, docs/deployment.md.)"""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._checked_at = -CHECK_EVERY

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        await self._check_stale()
        connection = await super().get_connection(  # type: ignore[no-untyped-call]
            *args, **options)
        current = self.master_address
        if current is not None and connection.is_connected \
                and (connection.host, connection.port) != tuple(current):
            try:
                await connection.disconnect()
                await connection.connect()  # through the sentinels
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def _check_stale(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = now
        # Bounded: sentinels that are slow or away cost a command CHECK_BOUND at most, and
        # the connections stay where they are (a command that fails there finds out).
        with contextlib.suppress(TimeoutError, ConnectionError, RedisTimeoutError, OSError):
            async with asyncio.timeout(CHECK_BOUND):
                await self.get_master_address()  # type: ignore[no-untyped-call]


class SentinelRedis(aioredis.Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.manager is not None:
                await self.manager.aclose()


def connect(url: str, *, timeout: float | None = None,
            failover_wait: float = 10.0) -> aioredis.Redis:
    """A client for `url` (see the module's docstring). `timeout` bounds each command and
    each connection attempt (the sentinels' too); None: redis-py's defaults (no bound).
    `failover_wait`: with Sentinel, how long a command waits for a primary to answer."""
    if not url.startswith(f"{SENTINEL_SCHEME}:"):
        return aioredis.Redis.from_url(url, socket_timeout=timeout,
                                       socket_connect_timeout=timeout)
    target = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout,
                         "password": target.sentinel_password})
    client: SentinelRedis = sentinel.master_for(
        target.service, redis_class=SentinelRedis, connection_pool_class=PrimaryPool,
        connection_class=PrimaryConnection,
        db=target.db, password=target.password,
        retry=FailoverRetry(failover_wait),
        socket_timeout=timeout, socket_connect_timeout=timeout)
    client.manager = sentinel
    return client
