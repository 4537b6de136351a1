"""A scripted Kurento on loopback: a real WebSocket server that answers like KMS.

Every request is checked against the kmd.json interface definitions; anything that does
not fit (unknown method on that class, unknown or missing parameters) is recorded in
`violations`, which tests assert empty. Knobs: per-operation delays and errors, dropping
every connection, a restart that forgets all sessions, events pushed at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, WSMsgType, web

from kurento_ctl.jsonrpc import ErrorCode, encode_error, encode_event, encode_result, parse_request
from mediaserver.app import SERVER, create_app
from mediaserver.core import MediaServer
from tests.kmd import kmd
from tests.services import free_port


@dataclass
class ScriptedKms:
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sessions: set[str] = field(default_factory=set)
    objects: dict[str, str] = field(default_factory=dict)  # id -> class name
    subscriptions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: Seconds before answering, by operation name or "create <Class>".
    delays: dict[str, float] = field(default_factory=dict)
    #: By operation name, or "create <Class>": the error (code, message, data.type) to answer.
    errors: dict[str, tuple[int, str, str | None]] = field(default_factory=dict)
    #: As `errors`, but answered once each (popped when used).
    fail_once: dict[str, tuple[int, str, str | None]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    created_at: dict[str, int] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[Any, str, dict[str, Any]]] = field(default_factory=list)
    #: Events sent just before the reply to a subscribe of that type (a race KMS has).
    emit_before_reply: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    silent: bool = False  # accept requests but never answer
    #: Serve each socket's requests strictly one after another, as KMS does (websocketpp
    #: reads the next frame only once the handler answered the last).
    serial: bool = False
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    bound: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    connections: int = 0

    def __post_init__(self) -> None:
        self.objects["manager_ServerManager"] = "ServerManager"

    # -- knobs -----------------------------------------------------------------

    async def drop_connections(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    def restart(self) -> None:
        """A new process: new serverId, no sessions, no objects."""
        self.server_id = str(uuid.uuid4())
        self.sessions.clear()
        self.subscriptions.clear()
        self.objects = {"manager_ServerManager": "ServerManager"}

    async def emit(self, object_id: str, event_type: str, data: dict[str, Any]) -> int:
        """Sends an event to every session subscribed to it; returns how many got it."""
        sent = 0
        for session, obj, etype in set(self.subscriptions.values()):
            ws = self.bound.get(session)
            if obj == object_id and etype == event_type and ws is not None and not ws.closed:
                await ws.send_str(encode_event(object_id, event_type, {
                    "source": object_id, "tags": [], "timestampMillis": "1", "type": event_type,
                    **data}))
                sent += 1
        return sent

    # -- protocol ----------------------------------------------------------------

    def _class_of(self, object_id: Any) -> str:
        if object_id not in self.objects:
            raise _Fail(ErrorCode.MEDIA_OBJECT_NOT_FOUND, f"Object '{object_id}' not found")
        return self.objects[object_id]

    async def _answer(self, method: str, params: dict[str, Any], session: str) -> Any:
        if method == "create":
            cls = params.get("type", "")
            ctor = params.get("constructorParams") or {}
            self.violations += kmd().check_create(cls, ctor)
            if f"create {cls}" in self.delays:
                await asyncio.sleep(self.delays[f"create {cls}"])
            if f"create {cls}" in self.errors:
                code, message, data_type = self.errors[f"create {cls}"]
                raise _Fail(ErrorCode(code), message, data_type)
            if cls not in kmd().classes:
                raise _Fail(ErrorCode.MEDIA_OBJECT_NOT_AVAILABLE, f"Factory '{cls}' not found")
            parent = ctor.get("mediaPipeline")
            prefix = f"{parent}/" if parent else ""
            object_id = f"{prefix}{uuid.uuid4()}_kurento.{cls}"
            self.objects[object_id] = cls
            self.created_at[object_id] = int(time.time())
            await self.emit("manager_ServerManager", "ObjectCreated", {"object": object_id})
            return object_id
        if method == "invoke":
            cls = self._class_of(params.get("object"))
            op = params.get("operation", "")
            op_params = params.get("operationParams") or {}
            self.violations += kmd().check_invoke(cls, op, op_params)
            if op in self.delays:
                await asyncio.sleep(self.delays[op])
            if op in self.errors or op in self.fail_once:
                code, message, data_type = self.errors.get(op) or self.fail_once.pop(op)
                raise _Fail(ErrorCode(code), message, data_type)
            obj_id = str(params.get("object"))
            if op == "addTag":
                self.tags.setdefault(obj_id, {})[op_params["key"]] = op_params["value"]
                return None
            if op == "getTags":
                return [{"__module__": "kurento", "__type__": "Tag", "key": k, "value": v}
                        for k, v in self.tags.get(obj_id, {}).items()]
            if op == "getCreationTime":
                return self.created_at.get(obj_id, 0)
            if op == "getPipelines":
                return [o for o, c in self.objects.items() if c == "MediaPipeline"]
            return self.values.get(op)
        if method == "subscribe":
            obj = str(params.get("object"))
            cls = self._class_of(obj)
            if params.get("type") not in kmd().events(cls):
                self.violations.append(f"{cls} raises no {params.get('type')!r}")
                raise _Fail(ErrorCode.MEDIA_OBJECT_EVENT_NOT_SUPPORTED,
                            f"Event '{params.get('type')}' not supported")
            sub = str(uuid.uuid4())
            self.subscriptions[sub] = (session, obj, params["type"])
            if params["type"] in self.emit_before_reply:
                await self.emit(obj, params["type"], self.emit_before_reply[params["type"]])
            return sub
        if method == "unsubscribe":
            self.subscriptions.pop(params.get("subscription", ""), None)
            return None
        if method == "release":
            obj = params.get("object", "")
            for key in [k for k in self.objects if k == obj or k.startswith(f"{obj}/")]:
                del self.objects[key]
                await self.emit("manager_ServerManager", "ObjectDestroyed", {"objectId": key})
            return None
        if method == "describe":
            cls = self._class_of(params.get("object"))
            return {"type": cls, "qualifiedType": f"kurento.{cls}", "hierarchy": []}
        if method == "transaction":
            return await self._transaction(params, session)
        self.violations.append(f"unexpected method {method!r}")
        raise _Fail(ErrorCode.METHOD_NOT_FOUND, "Method not found.")

    async def _transaction(self, params: dict[str, Any], session: str) -> list[dict[str, Any]]:
        """As KMS runs one: ids must equal indexes, `newref:<i>` becomes op i's value, and
        processing stops at the first failing op."""
        replies: list[dict[str, Any]] = []
        values: list[Any] = []
        for index, op in enumerate(params.get("operations") or []):
            if op.get("id") != index:
                self.violations.append(f"transaction op {index} has id {op.get('id')!r}")
                raise _Fail(ErrorCode.MALFORMED_TRANSACTION,
                            f"Id of request '{index}' should be '{index}'")
            method = op.get("method", "")
            op_params = _inject_refs(op.get("params") or {}, values)
            if method in ("ping", "connect", "transaction"):
                self.violations.append(f"{method!r} inside a transaction")
            self.requests.append((f"tx/{index}", method, op_params))
            try:
                value = await self._answer(method, op_params, session)
            except _Fail as exc:
                error: dict[str, Any] = {"code": int(exc.code), "message": exc.message}
                data_type = exc.data_type or exc.code.data_type
                if data_type:
                    error["data"] = {"type": data_type}
                replies.append({"id": index, "jsonrpc": "2.0", "error": error})
                break
            values.append(value)
            result: dict[str, Any] = {"sessionId": session}
            if method not in ("release", "unsubscribe"):
                result["value"] = value
            replies.append({"id": index, "jsonrpc": "2.0", "result": result})
        return replies

    async def handle(self, ws: web.WebSocketResponse, text: str, state: dict[str, Any]) -> None:
        req = parse_request(text)
        if isinstance(req, str):
            await ws.send_str(req)
            return
        method, params = req.method, dict(req.params)
        self.requests.append((req.id, method, params))
        if self.silent:
            return
        try:
            if method == "ping":
                result: dict[str, Any] = {"value": "pong"}
                if state.get("session"):
                    result["sessionId"] = state["session"]
                await ws.send_str(encode_result(req.id, result))
                return
            if method == "connect":
                wanted = params.get("sessionId")
                if wanted is not None and wanted not in self.sessions:
                    raise _Fail(ErrorCode.INVALID_SESSION, "Invalid session")
                session = wanted or state.get("session") or str(uuid.uuid4())
            else:
                session = params.get("sessionId") or state.get("session") or str(uuid.uuid4())
            self.sessions.add(session)
            state["session"] = session
            self.bound[session] = ws
            if method == "connect":
                await ws.send_str(encode_result(req.id, {"serverId": self.server_id,
                                                         "sessionId": session}))
                return
            value = await self._answer(method, params, session)
            result = {"sessionId": session}
            if method == "describe":
                result |= value
            elif method not in ("release", "unsubscribe"):
                result["value"] = value
            if not ws.closed:
                await ws.send_str(encode_result(req.id, result))
        except _Fail as exc:
            if not ws.closed:
                await ws.send_str(encode_error(req.id, exc.code, exc.message,
                                               exc.data_type or exc.code.data_type))

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        self.connections += 1
        state: dict[str, Any] = {}
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and self.serial:
                    await self.handle(ws, msg.data, state)
                elif msg.type is WSMsgType.TEXT:
                    task = asyncio.create_task(self.handle(ws, msg.data, state))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            self.sockets.discard(ws)
            for task in tasks:
                task.cancel()
        return ws


def _inject_refs(value: Any, values: list[Any]) -> Any:
    if isinstance(value, str) and value.startswith("newref:"):
        index = int(value[len("newref:"):])
        return values[index] if index < len(values) else value
    if isinstance(value, dict):
        return {k: _inject_refs(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_inject_refs(v, values) for v in value]
    return value


class _Fail(Exception):
    def __init__(self, code: ErrorCode, message: str, data_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data_type = data_type


@contextlib.asynccontextmanager
async def _serve_kurento_path(handler: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serves `handler` at `/kurento` on loopback; yields its ws:// URL."""
    app = web.Application()
    app.router.add_get("/kurento", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"ws://127.0.0.1:{port}/kurento"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def run_kms_like(tmp: Path, *, gc_grace: float = 240.0, serial: bool = True,
                       ) -> AsyncIterator[tuple[str, MediaServer]]:
    """The embedded media server configured to behave like KMS where it can: one request
    at a time per socket, and a garbage-collector period of `gc_grace` seconds."""
    app = create_app(gc_grace=gc_grace, recordings_root=tmp, serial=serial)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"ws://127.0.0.1:{port}/kurento", app[SERVER]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def run_scripted_kms(port: int | None = None) -> AsyncIterator[tuple[str, ScriptedKms]]:
    kms = ScriptedKms()
    async with _serve_kurento_path(kms.socket, port) as url:
        try:
            yield url, kms
        finally:
            await kms.drop_connections()


@dataclass
class Frame:
    """One frame through the proxy: `socket` number, direction (">" to the server)."""

    socket: int
    direction: str
    message: dict[str, Any]


@dataclass
class KurentoProxy:
    """A loopback WebSocket proxy in front of a media server that logs every frame, to
    count how many round trips a piece of code waits for one after another."""

    upstream: str  # change it, then drop_connections(), and clients reconnect elsewhere
    frames: list[Frame] = field(default_factory=list)
    sockets: int = 0
    open: set[web.WebSocketResponse] = field(default_factory=set)

    async def drop_connections(self) -> None:
        for ws in list(self.open):
            await ws.close()

    def mark(self) -> int:
        return len(self.frames)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return [f.message for f in self.frames[since:] if f.direction == ">"]

    def sequential_round_trips(self, since: int = 0) -> int:
        """The longest chain of requests each sent after the reply to the one before it
        came back (pings left out): requests in flight together count once."""
        sent: dict[tuple[int, Any], int] = {}
        answered: dict[tuple[int, Any], int] = {}
        for position, frame in enumerate(self.frames[since:]):
            msg = frame.message
            key = (frame.socket, msg.get("id"))
            if frame.direction == ">" and "method" in msg and msg["method"] != "ping":
                sent[key] = position
            elif frame.direction == "<" and key in sent and "method" not in msg:
                answered[key] = position
        depth: dict[tuple[int, Any], int] = {}
        for key in sorted(sent, key=sent.__getitem__):
            earlier = [depth[k] for k in depth if answered.get(k, len(self.frames)) < sent[key]]
            depth[key] = 1 + max(earlier, default=0)
        return max(depth.values(), default=0)

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        self.sockets += 1
        number = self.sockets
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.open.add(ws)
        async with ClientSession() as http, http.ws_connect(self.upstream,
                                                            max_msg_size=0) as up:
            async def downstream() -> None:
                async for msg in up:
                    if msg.type is not WSMsgType.TEXT:
                        break
                    self.frames.append(Frame(number, "<", json.loads(msg.data)))
                    await ws.send_str(msg.data)
                await ws.close()

            task = asyncio.create_task(downstream())
            try:
                async for msg in ws:
                    if msg.type is not WSMsgType.TEXT:
                        break
                    self.frames.append(Frame(number, ">", json.loads(msg.data)))
                    await up.send_str(msg.data)
            finally:
                self.open.discard(ws)
                await up.close()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return ws


@contextlib.asynccontextmanager
async def run_kurento_proxy(upstream: str) -> AsyncIterator[tuple[str, KurentoProxy]]:
    proxy = KurentoProxy(upstream)
    async with _serve_kurento_path(proxy.socket) as url:
        yield url, proxy
