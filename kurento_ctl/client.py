"""`KurentoClient`: one session with one media server over an aiohttp WebSocket.

Many requests may be in flight at once; each has its own timeout. KMS serves one socket's
requests strictly one after another, so a ping can wait behind slow requests on a healthy
socket: the socket is dropped only when requests are outstanding and *nothing at all* came
back for `ping_timeout` seconds. The client then reconnects with backoff and resumes its
session with `connect {sessionId}`.

What a reconnect means (KMS 7.3 source, KMS-SOURCE-NOTES.md item 6):
- session resumed: objects and subscriptions are kept, but every event raised while no
  socket was bound was dropped; `on_resumed` listeners re-read state.
- a different `serverId`: the server restarted, every object we held is gone.
- 40007 with the same `serverId`: the server does not know the session (never used, or
  collected) — its objects may still be running, streaming and recording.
Both losses reach `on_session_lost` listeners as a `SessionLoss` saying which it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from kurento_ctl.coalesce import coalesce
from kurento_ctl.errors import (
    ConnectionLost,
    InvalidSession,
    KurentoError,
    ProtocolViolation,
    RequestTimeout,
    rpc_error,
)
from kurento_ctl.handlers import EventHandler, Handlers
from kurento_ctl.jsonrpc import (
    ClientProtocol,
    Notification,
    Reply,
    encode_operations,
    transaction_replies,
)

__all__ = ["EventHandler", "KurentoClient", "SessionLoss"]

log = logging.getLogger(__name__)

#: Events for ids without a handler kept while a transaction that subscribes to `newref:`
#: objects is in flight; a bound so that a flood cannot grow memory without end.
MAX_HELD_EVENTS = 10_000


@dataclass(frozen=True)
class SessionLoss:
    """Our session is gone. `restarted`: a new server process (objects gone too);
    otherwise the same process forgot the session and our objects may still run."""

    session_id: str
    old_server_id: str | None
    new_server_id: str | None

    @property
    def restarted(self) -> bool:
        return self.old_server_id is not None and self.new_server_id != self.old_server_id


SessionLostHandler = Callable[[SessionLoss], None]
ResumedHandler = Callable[[str], None]


def safe_call(handler: Callable[..., None], *args: Any) -> None:
    """A failing listener is logged and does not stop the others (mediasoup's safeEmit)."""
    try:
        handler(*args)
    except Exception:
        log.exception("! listener %r failed", handler)


class KurentoClient:
    def __init__(
        self,
        url: str,
        *,
        request_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        ping_interval: float = 5.0,
        ping_timeout: float | None = None,
        reconnect_delays: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0),
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        #: Silence (nothing received while requests wait) that proves the socket dead. KMS
        #: answers in order, so this must exceed the slowest single request (stopAndWait
        #: waits up to 4 s); any frame received proves the socket alive.
        self.ping_timeout = ping_timeout if ping_timeout is not None else max(
            request_timeout, 2 * ping_interval)
        self.reconnect_delays = tuple(reconnect_delays)
        self.server_id: str | None = None
        self._http = http
        self._own_http = http is None
        self._protocol = ClientProtocol()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._handlers = Handlers()
        self._session_lost: list[SessionLostHandler] = []
        self._resumed: list[ResumedHandler] = []
        self._sent_at: dict[int, float] = {}
        self._last_received = time.monotonic()
        self._holds: set[int] = set()
        self._hold_ids = itertools.count(1)
        self._held: list[Notification] = []
        self._connected = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle

    @property
    def session_id(self) -> str | None:
        return self._protocol.session_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self) -> None:
        """Opens the socket and a session; raises if the server cannot be reached, and
        then leaves no HTTP session of ours open (`connect` may be tried again)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            await self._open()
        except BaseException:
            await self._close_http()
            raise
        self._spawn(self._keepalive(), "keepalive")

    async def close(self) -> None:
        """Ends the socket, every task and the HTTP session we opened, even when the
        caller is cancelled meanwhile (a sweep stopped while it says goodbye): a session
        left open is only found, and warned about, by a later garbage collection."""
        self._closing = True
        self._connected.clear()
        ws, self._ws = self._ws, None
        try:
            try:
                if ws is not None:
                    await ws.close()
            finally:
                for task in list(self._tasks):
                    task.cancel()
                # gather, not suppress(CancelledError): a cancellation of close itself
                # must reach its caller, not be taken for a task's.
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        finally:
            self._fail_all(ConnectionLost("client closed"))
            await self._close_http()

    async def _close_http(self) -> None:
        http, self._http = self._http, None
        if self._own_http and http is not None:
            await http.close()

    async def __aenter__(self) -> KurentoClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"kurento:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        assert self._http is not None
        ws = await asyncio.wait_for(
            self._http.ws_connect(self.url, autoping=True, heartbeat=None, max_msg_size=0),
            self.connect_timeout,
        )
        coalesce(ws)
        self._ws = ws
        self._last_received = time.monotonic()
        self._spawn(self._read(ws), "reader")
        old_session = self._protocol.session_id
        unknown = False
        try:
            if old_session is None:
                result = await self._call("connect", {}, with_session=False)
            else:
                result = await self._call("connect", {"sessionId": old_session},
                                          with_session=False)
        except InvalidSession:
            unknown = True
            self._protocol.session_id = None
            result = await self._call("connect", {}, with_session=False)
        server_id = result.get("serverId") if isinstance(result, dict) else None
        old_server, self.server_id = self.server_id, server_id
        resumed = False
        if old_session is not None:
            loss = SessionLoss(old_session, old_server, server_id)
            if loss.restarted:
                log.warning("! %s restarted (serverId %s -> %s): session %s and its objects "
                            "are gone", self.url, old_server, server_id, old_session)
                self._lose_session(loss)
            elif unknown:
                log.warning("! session %s unknown to %s, same serverId: never used or "
                            "collected; its objects may still run", old_session, self.url)
                self._lose_session(loss)
            else:
                resumed = True
        self._connected.set()
        log.info("= connected to %s session=%s server=%s", self.url,
                 self._protocol.session_id, server_id)
        if resumed:
            for handler in list(self._resumed):
                safe_call(handler, self._protocol.session_id or "")

    def _lose_session(self, loss: SessionLoss) -> None:
        self._handlers.clear()
        for handler in list(self._session_lost):
            safe_call(handler, loss)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._last_received = time.monotonic()
                    try:
                        self._protocol.receive_text(msg.data)
                    except ProtocolViolation as exc:
                        log.warning("! %s from %s", exc, self.url)
                        continue
                    self._dispatch()
                elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
        finally:
            if self._ws is ws:
                self._on_socket_closed()

    def _dispatch(self) -> None:
        for item in self._protocol.events_received():
            if isinstance(item, Reply):
                self._sent_at.pop(item.id, None)
                future = self._futures.pop(item.id, None)
                if future is None or future.done():
                    continue
                if item.error is not None:
                    future.set_exception(rpc_error(item.error))
                else:
                    future.set_result(item.result)
            else:
                handlers = self._handlers.get(item.object_id, item.type)
                if handlers:
                    for handler in list(handlers):
                        safe_call(handler, item)
                elif self._holds and len(self._held) < MAX_HELD_EVENTS:
                    self._held.append(item)

    def hold_unrouted_events(self) -> int:
        """Keeps events nobody listens to until `release_unrouted_events(token)`: a
        transaction subscribes to objects whose ids we learn only from its reply, and KMS
        may send their first events before that reply."""
        token = next(self._hold_ids)
        self._holds.add(token)
        return token

    def release_unrouted_events(self, token: int) -> None:
        """Delivers the kept events that now have handlers, in arrival order; the others
        are kept while another hold lasts, dropped otherwise."""
        self._holds.discard(token)
        held, self._held = self._held, []
        for item in held:
            handlers = self._handlers.get(item.object_id, item.type)
            if handlers:
                for handler in list(handlers):
                    safe_call(handler, item)
            elif self._holds:
                self._held.append(item)

    def _on_socket_closed(self) -> None:
        self._connected.clear()
        self._ws = None
        self._fail_all(ConnectionLost(f"connection to {self.url} lost"))
        if not self._closing:
            log.warning("! connection to %s lost, reconnecting", self.url)
            self._spawn(self._reconnect(), "reconnect")

    def _fail_all(self, exc: KurentoError) -> None:
        self._protocol.fail_pending()
        self._sent_at.clear()
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(exc)

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            delay = self.reconnect_delays[min(attempt, len(self.reconnect_delays) - 1)]
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._open()
                return
            except (OSError, aiohttp.ClientError, TimeoutError, KurentoError) as exc:
                log.info("= reconnect to %s failed (%s), attempt %d", self.url,
                         type(exc).__name__, attempt)
                if self._ws is not None:
                    await self._ws.close()

    async def _keepalive(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.ping_interval)
            if not self._connected.is_set() or self._ws is None:
                continue
            ws = self._ws
            if self.silent_for() > self.ping_timeout:
                log.warning("! nothing from %s for %.1fs with requests waiting, dropping the "
                            "socket", self.url, self.silent_for())
                await ws.close()
                continue
            if not any(m == "ping" for m in self._protocol.pending.values()):
                # Its reply is not awaited here: it may queue behind slow requests (KMS
                # serves a socket in order); it only keeps something outstanding, so that a
                # half-open socket shows as silence.
                self._spawn(self._ping(), "ping")

    async def _ping(self) -> None:
        with contextlib.suppress(KurentoError):
            await self._call("ping", {"interval": int(self.ping_interval * 1000)},
                             timeout=max(self.ping_timeout, self.request_timeout))

    def silent_for(self) -> float:
        """Seconds the oldest waiting request has gone without the socket saying anything
        at all; 0 when nothing waits or a frame arrived since it was sent."""
        if not self._sent_at:
            return 0.0
        now = time.monotonic()
        since = max(min(self._sent_at.values()), self._last_received)
        return now - since

    # ---------------------------------------------------------------- requests

    async def _call(self, method: str, params: dict[str, Any], *, with_session: bool = True,
                    timeout: float | None = None) -> Any:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLost(f"not connected to {self.url}")
        request_id = self._protocol.send_request(method, params, with_session=with_session)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._futures[request_id] = future
        self._sent_at[request_id] = time.monotonic()
        for text in self._protocol.data_to_send():
            log.debug("> %s", text[:300])
            await ws.send_str(text)
        limit = timeout or self.request_timeout
        # One timer per request rather than asyncio.wait_for, which wraps every request in
        # a task-like waiter: the Kurento client's share of the hot path (bench.signalling).
        expiry = loop.call_later(limit, self._expire, request_id, method, limit)
        try:
            return await future
        finally:
            expiry.cancel()

    def _expire(self, request_id: int, method: str, limit: float) -> None:
        future = self._futures.pop(request_id, None)
        self._sent_at.pop(request_id, None)
        self._protocol.forget(request_id)
        if future is not None and not future.done():
            future.set_exception(RequestTimeout(f"{method} to {self.url}: no reply in "
                                                f"{limit}s"))

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      timeout: float | None = None) -> Any:
        """Sends one request once connected and returns its `result`."""
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), timeout or self.request_timeout)
            except TimeoutError:
                raise ConnectionLost(f"not connected to {self.url}") from None
        return await self._call(method, params or {}, timeout=timeout)

    async def transaction(self, operations: Sequence[tuple[str, dict[str, Any]]], *,
                          timeout: float | None = None) -> list[Reply | None]:
        """Runs `(method, params)` ops in one round trip; KMS stops at the first that fails.

        Returns one reply per op (None: not run). `"newref:<i>"` in an op's params stands
        for the value op i returned. Errors of single ops are in the replies, not raised.
        """
        result = await self.request("transaction", {"operations": encode_operations(operations)},
                                    timeout=timeout)
        return transaction_replies(result, len(operations))

    # ---------------------------------------------------------------- events

    def add_handler(self, object_id: str, event_type: str, handler: EventHandler) -> None:
        self._handlers.add(object_id, event_type, handler)

    def remove_handler(self, object_id: str, event_type: str, handler: EventHandler) -> None:
        self._handlers.remove(object_id, event_type, handler)

    def drop_object(self, object_id: str) -> None:
        """Forgets every handler of an object and of its children (after release)."""
        self._handlers.drop_object(object_id)

    def on_session_lost(self, handler: SessionLostHandler) -> Callable[[], None]:
        """Registers `handler(SessionLoss)`; returns a function that unregisters it."""
        self._session_lost.append(handler)
        return lambda: self._session_lost.remove(handler) if handler in self._session_lost \
            else None

    def on_resumed(self, handler: ResumedHandler) -> Callable[[], None]:
        """Registers `handler(session_id)`, called after a reconnect kept the session: the
        objects and subscriptions are there, the events of the gap are not."""
        self._resumed.append(handler)
        return lambda: self._resumed.remove(handler) if handler in self._resumed else None

    @property
    def handler_count(self) -> int:
        return self._handlers.count()

    @property
    def task_count(self) -> int:
        return len(self._tasks)
