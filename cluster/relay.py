"""Browser sockets carried between signalling nodes over Redis pub/sub.

A browser's socket may land on any node; its call runs on the node that owns it. The node
holding the socket (the *edge*) passes its text frames, unchanged, to the owner, where a
`RemoteSocket` stands in for the WebSocket and an ordinary `ClientSession` serves it; what
that session sends comes back the same way. The protocol the browser speaks is unchanged.

Why pub/sub and not Streams: frames are as ephemeral as the socket that carries them, and
a socket's loss is already handled (the page reconnects and resumes). Each node has one
channel and one writer, so frames keep their order; every message is numbered per sending
node, and a gap (Redis restarted, a subscription dropped) closes the sockets shared with
that node, as a dropped socket would be, instead of losing frames silently. Streams would
add a write and a trim per frame to keep what nobody needs after the socket is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from cluster.ownership import stop_task

__all__ = ["CHANNEL", "RelayBus", "RemoteError", "RemoteSocket"]

log = logging.getLogger(__name__)

CHANNEL = "telemed:relay:"
#: Close code for a socket whose other end went away: the page reconnects at once.
GONE = WSCloseCode.SERVICE_RESTART


class RemoteError(Exception):
    """An operation another node ran failed (with the code its client should see)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteSocket:
    """On the owner: the browser's socket as the edge node relays it, with the part of
    `web.WebSocketResponse` a `ClientSession` uses."""

    def __init__(self, bus: RelayBus, sid: str, edge: str) -> None:
        self.bus = bus
        self.sid = sid
        self.edge = edge
        self.closed = False
        self._in: asyncio.Queue[WSMessage | None] = asyncio.Queue()

    def feed(self, text: str) -> None:
        self._in.put_nowait(WSMessage(WSMsgType.TEXT, text, None))

    def hang_up(self) -> None:
        """The browser (or the edge node) is gone."""
        self.closed = True
        self._in.put_nowait(None)

    def __aiter__(self) -> RemoteSocket:
        return self

    async def __anext__(self) -> WSMessage:
        message = await self._in.get()
        if message is None:
            raise StopAsyncIteration
        return message

    async def send_str(self, text: str) -> None:
        if not self.closed:
            self.bus.post(self.edge, {"k": "frame", "sid": self.sid, "text": text})

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        if self.closed:
            return False
        self.bus.post(self.edge, {"k": "close", "sid": self.sid, "code": int(code),
                                  "reason": message.decode(errors="replace")})
        self.bus.remote.pop(self.sid, None)
        self.hang_up()
        return True


class _Carried:
    """On the edge: one browser socket whose call runs elsewhere."""

    def __init__(self, ws: web.WebSocketResponse, owner: str) -> None:
        self.ws = ws
        self.owner = owner
        self.out: asyncio.Queue[str | tuple[int, str] | None] = asyncio.Queue()

    async def write(self) -> None:
        while (item := await self.out.get()) is not None:
            if isinstance(item, tuple):
                code, reason = item
                await self.ws.close(code=code, message=reason.encode())
                return
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(item)


class RelayBus:
    """This node's end of the relay: one channel in, one ordered writer out."""

    def __init__(self, redis: aioredis.Redis, node_id: str, *,
                 alive: Callable[[str], Any] | None = None, check_interval: float = 1.0) -> None:
        self.redis = redis
        self.node_id = node_id
        #: `async (node) -> bool`: whether a node is still heard of.
        self.alive = alive
        self.check_interval = check_interval
        #: Starts serving a socket relayed to this node (the owner side).
        self.on_open: Callable[[RemoteSocket, str, str], None] | None = None
        self.remote: dict[str, RemoteSocket] = {}
        self.carried: dict[str, _Carried] = {}
        self._out: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._sent: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        #: Operations other nodes may ask this one to run: `op -> async (args) -> answer`.
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        self._asked: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.frames_in = 0
        self.frames_out = 0

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self._pubsub.subscribe(CHANNEL + self.node_id)  # else the reader retries
        self._tasks = [asyncio.create_task(self._read(), name="relay in"),
                       asyncio.create_task(self._write(), name="relay out"),
                       asyncio.create_task(self._watch(), name="relay peers")]

    def drop_all(self) -> None:
        """This node stops: the sockets it carries close at once (the pages reconnect to
        another node); those carried to it hear their sessions' own close."""
        for sid in list(self.carried):
            self._end_carried(sid, GONE, "service.restarting")

    async def close(self) -> None:
        self.drop_all()
        for sock in list(self.remote.values()):
            sock.hang_up()
        self.remote.clear()
        # What is queued (close frames among it) leaves before the writer stops.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._out.join(), 2.0)
        self._stopping = True
        for task in self._tasks:
            await stop_task(task)
        if self._pubsub is not None:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self._pubsub.aclose()

    def post(self, node: str, message: dict[str, Any]) -> None:
        self._out.put_nowait((node, message))

    # ------------------------------------------------------------------ the edge side

    async def carry(self, ws: web.WebSocketResponse, owner: str, first: str, peer: str) -> None:
        """Relays a browser socket to the node running its call, from its first frame
        (the `hello` this node read) until either end closes."""
        sid = uuid.uuid4().hex
        carried = self.carried[sid] = _Carried(ws, owner)
        writer = asyncio.create_task(carried.write())
        self.post(owner, {"k": "open", "sid": sid, "peer": peer, "text": first})
        log.info("> socket relayed to node %s", owner, extra={"peer": peer})
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self.post(owner, {"k": "frame", "sid": sid, "text": msg.data})
                elif msg.type is WSMsgType.BINARY:
                    # The owner would refuse it the same way; the edge saves the trip.
                    carried.out.put_nowait(json.dumps({
                        "type": "error", "code": "message.malformed",
                        "message": "binary frames are not accepted"}))
        finally:
            if self.carried.pop(sid, None) is not None:
                self.post(owner, {"k": "close", "sid": sid})
            carried.out.put_nowait(None)
            await writer

    def _end_carried(self, sid: str, code: int, reason: str) -> None:
        carried = self.carried.pop(sid, None)
        if carried is not None:
            carried.out.put_nowait((code, reason))

    # ------------------------------------------------------------------ operations

    async def ask(self, node: str, op: str, args: dict[str, Any], *,
                  timeout: float = 5.0) -> dict[str, Any]:
        """Runs `op` on `node`; its answer, or `RemoteError` with the code it failed with."""
        rid = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked[rid] = (node, future)
        self.post(node, {"k": "ask", "rid": rid, "op": op, "args": args})
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RemoteError("service.unavailable",
                              f"node {node} did not answer; retry shortly") from None
        finally:
            self._asked.pop(rid, None)

    async def _answer(self, sender: str, message: dict[str, Any]) -> None:
        handler = self.handlers.get(str(message.get("op")))
        reply: dict[str, Any] = {"k": "answer", "rid": message.get("rid")}
        try:
            if handler is None:
                raise RemoteError("internal", f"no operation {message.get('op')!r}")
            reply["result"] = await handler(dict(message.get("args") or {}))
        except RemoteError as exc:
            reply.update(code=exc.code, message=exc.message)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str):  # a CallError and its kin: the client's to see
                reply.update(code=code, message=getattr(exc, "message", str(exc)))
            else:
                log.exception("! operation %s asked by node %s failed", message.get("op"),
                              sender)
                reply.update(code="internal", message="internal error")
        self.post(sender, reply)

    # ------------------------------------------------------------------ both sides

    def _dispatch(self, sender: str, message: dict[str, Any]) -> None:
        kind, sid = message.get("k"), str(message.get("sid"))
        if kind == "open":
            opened = self.remote[sid] = RemoteSocket(self, sid, sender)
            opened.feed(str(message["text"]))
            if self.on_open is not None:
                self.on_open(opened, str(message.get("peer", "?")), sender)
        elif kind == "frame":
            self.frames_in += 1
            if (sock := self.remote.get(sid)) is not None:
                sock.feed(str(message["text"]))
            elif (carried := self.carried.get(sid)) is not None:
                carried.out.put_nowait(str(message["text"]))
            else:
                # A socket this node no longer serves (it restarted): the edge hangs up.
                self.post(sender, {"k": "close", "sid": sid, "code": int(GONE)})
        elif kind == "ask":
            task = asyncio.create_task(self._answer(sender, message))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
        elif kind == "answer":
            asked = self._asked.get(str(message.get("rid")))
            if asked is not None and not asked[1].done():
                if "result" in message:
                    asked[1].set_result(dict(message["result"]))
                else:
                    asked[1].set_exception(RemoteError(str(message.get("code")),
                                                       str(message.get("message"))))
        elif kind == "close":
            if (gone := self.remote.pop(sid, None)) is not None:
                gone.hang_up()
            self._end_carried(sid, int(message.get("code") or GONE),
                              str(message.get("reason") or ""))

    def _drop_peer(self, node: str, why: str) -> None:
        """Every socket shared with `node` closes, as if dropped: the pages reconnect."""
        carried = [sid for sid, c in self.carried.items() if c.owner == node]
        remote = [sid for sid, s in self.remote.items() if s.edge == node]
        if carried or remote:
            log.warning("! node %s %s: closing %d relayed sockets", node, why,
                        len(carried) + len(remote))
        for sid in carried:
            self._end_carried(sid, GONE, "service.restarting")
        for sid in remote:
            self.remote.pop(sid).hang_up()
        for asked_of, future in self._asked.values():
            if asked_of == node and not future.done():
                future.set_exception(RemoteError("service.unavailable",
                                                 f"node {node} is unreachable; retry"))
        self._seen.pop(node, None)

    async def _read(self) -> None:
        while not self._stopping:
            try:
                if not self._pubsub.subscribed:
                    await self._pubsub.subscribe(CHANNEL + self.node_id)
                raw = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                     timeout=1.0)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("! relay subscription lost: %s", type(exc).__name__)
                for node in {*(c.owner for c in self.carried.values()),
                             *(s.edge for s in self.remote.values())}:
                    self._drop_peer(node, "unreachable (the relay's subscription dropped)")
                await asyncio.sleep(self.check_interval)
                continue
            if raw is None:
                continue
            try:
                envelope = json.loads(raw["data"])
                sender, n = str(envelope["from"]), int(envelope["n"])
                expected = self._seen.get(sender)
                if expected is not None and n != expected + 1:
                    self._drop_peer(sender, f"skipped relay messages ({expected} then {n})")
                self._seen[sender] = n
                for message in envelope["m"]:
                    self._dispatch(sender, message)
            except Exception:
                log.exception("! a relayed message could not be handled")

    async def _write(self) -> None:
        while not self._stopping:
            node, message = await self._out.get()
            batch: dict[str, list[dict[str, Any]]] = {node: [message]}
            taken = 1
            while not self._out.empty():
                node, message = self._out.get_nowait()
                batch.setdefault(node, []).append(message)
                taken += 1
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for node, messages in batch.items():
                        n = self._sent[node] = self._sent.get(node, 0) + 1
                        pipe.publish(CHANNEL + node, json.dumps(
                            {"from": self.node_id, "n": n, "m": messages},
                            separators=(",", ":")))
                        self.frames_out += len(messages)
                    await pipe.execute()
            except (aioredis.RedisError, OSError) as exc:
                for node in batch:
                    self._drop_peer(node, f"unreachable ({type(exc).__name__})")
            finally:
                for _ in range(taken):
                    self._out.task_done()

    async def _watch(self) -> None:
        """Closes the sockets shared with a node that is no longer heard of."""
        while not self._stopping:
            await asyncio.sleep(self.check_interval)
            if self.alive is None:
                continue
            peers = {*(c.owner for c in self.carried.values()),
                     *(s.edge for s in self.remote.values())}
            for node in peers:
                try:
                    if not await self.alive(node):
                        self._drop_peer(node, "is gone")
                except (aioredis.RedisError, OSError):
                    pass  # Redis away: the subscription's own failure tells
