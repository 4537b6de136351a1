"""The Kurento JSON-RPC methods over our object tree, with KMS's session semantics.

Sessions are created implicitly, bound to the socket that last carried one of their
replies, receive events only there (dropped while detached), and are garbage-collected
with every pipeline they created when no socket comes back within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kurento_ctl.jsonrpc import ErrorCode, Request, check_request, encode_event
from mediaserver.elements import Element, KmsError, MediaObjectImpl, MediaPipelineImpl, Method
from mediaserver.player import PlayerEndpointImpl
from mediaserver.recorder import RecorderEndpointImpl
from mediaserver.webrtc import WebRtcEndpointImpl

__all__ = ["MediaServer", "Session"]

log = logging.getLogger(__name__)

VERSION = "7.3.0"
FACTORIES = ("MediaPipeline", "WebRtcEndpoint", "RecorderEndpoint", "PlayerEndpoint")
Sender = Callable[[str], None]


@dataclass
class Session:
    id: str
    sender: Sender | None = None
    subscriptions: dict[str, tuple[str, str]] = field(default_factory=dict)
    pipelines: set[str] = field(default_factory=set)
    detached_at: float | None = None

    def subscribed(self, object_id: str, event_type: str) -> bool:
        return (object_id, event_type) in self.subscriptions.values()


class ServerManagerImpl(MediaObjectImpl):
    type_name = "ServerManager"
    events = frozenset({"Error", "ObjectCreated", "ObjectDestroyed"})

    def methods(self) -> dict[str, Method]:
        return {
            "getPipelines": Method(self._pipelines),
            "getSessions": Method(self._sessions),
            "getInfo": Method(self._info),
            "getUsedMemory": Method(self._memory),
            "getUsedCpu": Method(self._cpu, ("interval",)),
            "getCpuCount": Method(self._cpu_count),
            "getMetadata": Method(self._metadata),
        }

    async def _pipelines(self, params: dict[str, Any]) -> list[str]:
        return sorted(o.id for o in self.server.objects.values()
                      if isinstance(o, MediaPipelineImpl))

    async def _sessions(self, params: dict[str, Any]) -> list[str]:
        return sorted(self.server.sessions)

    async def _info(self, params: dict[str, Any]) -> dict[str, Any]:
        module = {"__module__": "kurento", "__type__": "ModuleInfo",
                  "generationTime": "embedded", "version": VERSION}
        return {
            "__module__": "kurento", "__type__": "ServerInfo",
            "capabilities": ["transactions"], "type": "KMS", "version": VERSION,
            "modules": [
                module | {"name": "core", "factories": ["MediaPipeline"]},
                module | {"name": "elements", "factories": list(FACTORIES[1:])},
                module | {"name": "filters", "factories": []},
            ],
        }

    async def _memory(self, params: dict[str, Any]) -> int:
        status = Path("/proc/self/status").read_text()  # noqa: ASYNC240 - procfs, no disk I/O
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def _cpu(self, params: dict[str, Any]) -> float:
        interval = params.get("interval", 1000)
        if not isinstance(interval, int) or interval < 0:
            raise KmsError(ErrorCode.MARSHALL_ERROR, "'interval' parameter should be a integer")
        start_cpu, start = time.process_time(), time.monotonic()
        await asyncio.sleep(interval / 1000)  # KMS blocks for the interval too
        elapsed = max(time.monotonic() - start, 1e-6)
        return 100.0 * (time.process_time() - start_cpu) / elapsed / (os.cpu_count() or 1)

    async def _cpu_count(self, params: dict[str, Any]) -> int:
        return os.cpu_count() or 1

    async def _metadata(self, params: dict[str, Any]) -> str:
        return ""


class MediaServer:
    def __init__(self, *, strict_candidates: bool = False, gc_grace: float = 240.0,
                 recordings_root: Path | None = None) -> None:
        self.server_id = str(uuid.uuid4())
        self.strict_candidates = strict_candidates
        self.gc_grace = gc_grace
        self.recordings_root = recordings_root
        self.sessions: dict[str, Session] = {}
        self.objects: dict[str, MediaObjectImpl] = {}
        self.manager = ServerManagerImpl(self, "manager_ServerManager", None)
        self.objects[self.manager.id] = self.manager
        self._gc_task: asyncio.Task[None] | None = None
        self._released = asyncio.Event()

    # ---------------------------------------------------------------- sessions

    def session_for(self, params: dict[str, Any], bound: Session | None) -> Session:
        session_id = params.get("sessionId")
        if not isinstance(session_id, str):
            if bound is not None:
                return bound
            session_id = str(uuid.uuid4())
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = Session(session_id)
        return session

    def detach(self, session: Session) -> None:
        session.sender = None
        session.detached_at = time.monotonic()
        if self._gc_task is None or self._gc_task.done():
            self._gc_task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        while any(s.sender is None for s in self.sessions.values()):
            await asyncio.sleep(min(self.gc_grace / 2, 5.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.sender is None and session.detached_at is not None \
                        and now - session.detached_at >= self.gc_grace:
                    await self.close_session(session)

    async def close_session(self, session: Session) -> None:
        log.info("= session %s collected with %d pipelines", session.id, len(session.pipelines))
        self.sessions.pop(session.id, None)
        for pipeline_id in list(session.pipelines):
            obj = self.objects.get(pipeline_id)
            if obj is not None:
                await self.release_object(obj)

    def emit(self, object_id: str, event_type: str, data: dict[str, Any]) -> None:
        text: str | None = None
        for session in self.sessions.values():
            if session.sender is not None and session.subscribed(object_id, event_type):
                text = text or encode_event(object_id, event_type, data)
                session.sender(text)

    # ---------------------------------------------------------------- objects

    def lookup(self, object_id: Any) -> MediaObjectImpl:
        if not isinstance(object_id, str):
            raise KmsError(ErrorCode.SERVER_ERROR, "'object' parameter is required")
        if object_id.startswith("newref:"):
            raise KmsError(ErrorCode.MEDIA_OBJECT_NOT_FOUND_TRANSACTION_NO_COMMIT,
                           f"Object '{object_id}' not found. Possibly using a transactional "
                           "object without committing the transaction.")
        obj = self.objects.get(object_id)
        if obj is None:
            raise KmsError(ErrorCode.MEDIA_OBJECT_NOT_FOUND, f"Object '{object_id}' not found")
        return obj

    async def release_object(self, obj: MediaObjectImpl) -> None:
        if obj.released or obj is self.manager:
            return
        try:
            await obj.release()
        except Exception:
            log.exception("! releasing %s failed", obj.id)
        self.objects.pop(obj.id, None)
        for session in self.sessions.values():
            session.pipelines.discard(obj.id)
        self.manager.emit("ObjectDestroyed", objectId=obj.id)
        self._released.set()
        self._released = asyncio.Event()

    async def wait_idle(self) -> None:
        """Returns once no pipeline is left (every recorder finalized with it)."""
        while any(isinstance(o, MediaPipelineImpl) for o in self.objects.values()):
            await self._released.wait()

    def _create(self, type_name: str, params: dict[str, Any]) -> MediaObjectImpl:
        if type_name == "MediaPipeline":
            return MediaPipelineImpl(self)
        if type_name not in FACTORIES:
            raise KmsError(ErrorCode.MEDIA_OBJECT_NOT_AVAILABLE, f"Factory '{type_name}' not found")
        pipeline_id = params.get("mediaPipeline")
        if not isinstance(pipeline_id, str):
            raise KmsError(ErrorCode.MARSHALL_ERROR,
                           "'mediaPipeline' parameter should be a MediaPipeline")
        pipeline = self.lookup(pipeline_id)
        if not isinstance(pipeline, MediaPipelineImpl):
            raise KmsError(ErrorCode.MARSHALL_ERROR,
                           "'mediaPipeline' parameter should be a MediaPipeline")
        element: Element
        if type_name == "WebRtcEndpoint":
            element = WebRtcEndpointImpl(self, pipeline, params)
        elif type_name == "PlayerEndpoint":
            element = PlayerEndpointImpl(self, pipeline, params)
        else:
            element = RecorderEndpointImpl(self, pipeline, params)
        pipeline.children[element.id] = element
        return element

    # ---------------------------------------------------------------- dispatch

    async def handle(self, request: Request, bound: Session | None) -> tuple[Any, Session | None]:
        """Runs one request; returns (result, session the reply belongs to)."""
        method, params = request.method, request.params
        if method == "ping":
            session = self.sessions.get(params.get("sessionId", "")) if "sessionId" in params \
                else bound
            result: dict[str, Any] = {"value": "pong"}
            if session is not None:
                result["sessionId"] = session.id
            return result, session
        if method in ("connect", "keepAlive"):
            session_id = params.get("sessionId")
            if session_id is None and method == "connect":
                session = bound or self.session_for({}, None)
                return {"serverId": self.server_id, "sessionId": session.id}, session
            existing = self.sessions.get(session_id) if isinstance(session_id, str) else None
            if existing is None:
                raise KmsError(ErrorCode.INVALID_SESSION, "Invalid session")
            if method == "keepAlive":
                return {"sessionId": existing.id}, existing
            return {"serverId": self.server_id, "sessionId": existing.id}, existing
        if method not in ("create", "invoke", "subscribe", "unsubscribe", "release", "describe",
                          "transaction", "ref", "unref", "closeSession"):
            raise KmsError(ErrorCode.METHOD_NOT_FOUND, "Method not found.")
        session = self.session_for(params, bound)
        value = await self._session_method(method, params, session)
        result = {"sessionId": session.id}
        if method not in ("release", "unsubscribe", "ref", "unref"):
            result["value"] = value
        if method == "describe":
            result = value | {"sessionId": session.id}
        if method == "closeSession":
            return None, session
        return result, session

    async def _session_method(self, method: str, params: dict[str, Any],
                              session: Session) -> Any:
        if method == "create":
            type_name = params.get("type")
            if not isinstance(type_name, str):
                raise KmsError(ErrorCode.SERVER_ERROR, "'type' parameter should be a string")
            ctor = params.get("constructorParams") or {}
            if not isinstance(ctor, dict):
                raise KmsError(ErrorCode.MARSHALL_ERROR, "'constructorParams' should be an object")
            obj = self._create(type_name, ctor)
            self.objects[obj.id] = obj
            if isinstance(obj, MediaPipelineImpl):
                session.pipelines.add(obj.id)
            self.manager.emit("ObjectCreated", object=obj.id)
            return obj.id
        if method == "transaction":
            return await self._transaction(params, session)
        if method == "closeSession":
            await self.close_session(session)
            return None
        if method == "release" and isinstance(params.get("object"), str) \
                and params["object"] not in self.objects:
            return None  # KMS: releasing an unknown or released id succeeds
        obj = self.lookup(params.get("object"))
        if method == "describe":
            return {"hierarchy": list(obj.hierarchy), "qualifiedType": f"kurento.{obj.type_name}",
                    "type": obj.type_name}
        if method == "release":
            await self.release_object(obj)
            return None
        if method in ("ref", "unref"):
            return None
        if method == "subscribe":
            event_type = params.get("type")
            if not isinstance(event_type, str):
                raise KmsError(ErrorCode.SERVER_ERROR, "'type' parameter should be a string")
            if event_type not in obj.events:
                raise KmsError(ErrorCode.MEDIA_OBJECT_EVENT_NOT_SUPPORTED,
                               f"Event '{event_type}' not supported")
            subscription = str(uuid.uuid4())
            session.subscriptions[subscription] = (obj.id, event_type)
            return subscription
        if method == "unsubscribe":
            session.subscriptions.pop(str(params.get("subscription")), None)
            return None
        return await self._invoke(obj, params)

    async def _invoke(self, obj: MediaObjectImpl, params: dict[str, Any]) -> Any:
        operation = params.get("operation")
        if not isinstance(operation, str):
            raise KmsError(ErrorCode.SERVER_ERROR, "'operation' parameter should be a string")
        op_params = params.get("operationParams", {})
        if op_params is None:
            op_params = {}
        if not isinstance(op_params, dict):
            raise KmsError(ErrorCode.MARSHALL_ERROR, "'operationParams' should be an object")
        method = obj.methods().get(operation)
        if method is None:
            raise KmsError(ErrorCode.MALFORMED_TRANSACTION,
                           f"Method '{operation}' with {len(op_params)} parameters not found")
        for name in method.required:
            if name not in op_params:
                if not op_params:
                    raise KmsError(ErrorCode.MARSHALL_ERROR, "'operationParams' is required")
                raise KmsError(ErrorCode.MARSHALL_ERROR, f"'{name}' parameter is required")
        unknown = set(op_params) - set(method.required) - set(method.optional)
        if unknown:
            raise KmsError(ErrorCode.MALFORMED_TRANSACTION,
                           f"Method '{operation}' with {len(op_params)} parameters not found")
        return await method.handler(op_params)

    async def _transaction(self, params: dict[str, Any], session: Session) -> list[Any]:
        operations = params.get("operations")
        if not isinstance(operations, list):
            raise KmsError(ErrorCode.MALFORMED_TRANSACTION, "'operations' should be an array")
        results: list[Any] = []
        values: list[Any] = []
        for index, raw in enumerate(operations):
            op = check_request(raw)
            if isinstance(op, str):
                raise KmsError(ErrorCode.MALFORMED_TRANSACTION, f"Invalid request {index}")
            if op.id != index:
                raise KmsError(ErrorCode.MALFORMED_TRANSACTION,
                               f"Id of request '{index}' should be '{index}'")
            op_params = _inject_refs(op.params, values)
            op_params["sessionId"] = session.id
            try:
                result, _ = await self.handle(Request(op.id, op.method, op_params), session)
            except KmsError as exc:
                results.append({"id": index, "jsonrpc": "2.0", "error": _error_obj(exc)})
                break
            values.append(result.get("value") if isinstance(result, dict) else None)
            results.append({"id": index, "jsonrpc": "2.0", "result": result})
            # Many ops complete without suspending; let the media tasks run between them.
            await asyncio.sleep(0)
        return results

    async def close(self) -> None:
        """Finalizes every recorder, then releases everything (server shutdown)."""
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
        recorders = [o for o in self.objects.values() if isinstance(o, RecorderEndpointImpl)]
        await asyncio.gather(*(r.finalize() for r in recorders), return_exceptions=True)
        for obj in [o for o in self.objects.values() if isinstance(o, MediaPipelineImpl)]:
            await self.release_object(obj)


def _error_obj(exc: KmsError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": int(exc.code), "message": exc.message}
    if exc.code.data_type is not None:
        error["data"] = {"type": exc.code.data_type}
    return error


def _inject_refs(value: Any, values: list[Any]) -> Any:
    if isinstance(value, str) and value.startswith("newref:"):
        try:
            index = int(value[len("newref:"):])
        except ValueError:
            return value
        return values[index] if 0 <= index < len(values) else value
    if isinstance(value, dict):
        return {k: _inject_refs(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_inject_refs(v, values) for v in value]
    return value
