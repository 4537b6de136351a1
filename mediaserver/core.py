"""The Kurento JSON-RPC methods over our object tree, with KMS's session semantics.

Sessions are created implicitly, bound to the socket that last carried one of their
replies, and receive events only there (dropped while detached). Who owns what, and when
an orphan is collected, follows KMS's MediaSet (mediaserver.ownership). Every object also
answers the generic MediaObject/MediaElement surface of kmd.json (mediaserver.surface).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

from kurento_ctl.jsonrpc import ErrorCode, Request, check_request, encode_event
from mediaserver.elements import Element, KmsError, MediaObjectImpl, MediaPipelineImpl
from mediaserver.manager import FACTORIES, ServerManagerImpl
from mediaserver.ownership import Ownership, Session
from mediaserver.player import PlayerEndpointImpl
from mediaserver.recorder import RecorderEndpointImpl
from mediaserver.surface import ObjectState, element_stats, generic_methods, not_implemented
from mediaserver.webrtc import WebRtcEndpointImpl

__all__ = ["MediaServer", "Session"]

log = logging.getLogger(__name__)


class MediaServer:
    def __init__(self, *, strict_candidates: bool = False, gc_grace: float = 240.0,
                 recordings_root: Path | None = None) -> None:
        self.server_id = str(uuid.uuid4())
        self.strict_candidates = strict_candidates
        #: KMS's `garbageCollectorPeriod`: an orphan goes 0.75 to 2 periods after its
        #: owners' sockets closed.
        self.gc_grace = gc_grace
        self.recordings_root = recordings_root
        self.objects: dict[str, MediaObjectImpl] = {}
        self.states: dict[str, ObjectState] = {}
        self.ownership = Ownership(gc_grace, self.objects, self.release_object)
        self.sessions = self.ownership.sessions
        self.manager = ServerManagerImpl(self, "manager_ServerManager", None)
        self._add(self.manager)
        self._released = asyncio.Event()

    # ---------------------------------------------------------------- sessions

    def session_for(self, params: dict[str, Any], bound: Session | None) -> Session:
        session_id = params.get("sessionId")
        if not isinstance(session_id, str):
            if bound is not None:
                return bound
            session_id = str(uuid.uuid4())
        return self.ownership.session(session_id)

    def detach(self, session: Session) -> None:
        session.sender = None

    async def close_session(self, session: Session) -> None:
        await self.ownership.unref_session(session)

    def emit(self, object_id: str, event_type: str, data: dict[str, Any]) -> None:
        state = self.states.get(object_id)
        if state is not None and state.send_tags_in_events and state.tags:
            data = data | {"tags": [{"__module__": "kurento", "__type__": "Tag", "key": k,
                                     "value": v} for k, v in state.tags.items()]}
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

    def _add(self, obj: MediaObjectImpl) -> None:
        self.objects[obj.id] = obj
        self.states[obj.id] = ObjectState(name=obj.id)

    async def release_object(self, obj: MediaObjectImpl) -> None:
        if obj.released or obj is self.manager:
            return
        try:
            await obj.release()
        except Exception:
            log.exception("! releasing %s failed", obj.id)
        self.objects.pop(obj.id, None)
        self.states.pop(obj.id, None)
        self.ownership.forget(obj.id)
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
            if existing is None or not existing.known:
                raise KmsError(ErrorCode.INVALID_SESSION, "Invalid session")
            existing.in_use = True
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
            self._add(obj)
            self.ownership.created(session, obj)
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
        if method == "unref":
            await self.ownership.unref(session, obj)
            return None
        if method != "release":
            self.ownership.touch(session, obj)
        if method == "describe":
            return {"hierarchy": list(obj.hierarchy), "qualifiedType": f"kurento.{obj.type_name}",
                    "type": obj.type_name}
        if method == "release":
            await self.release_object(obj)
            return None
        if method == "ref":
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
        state = self.states.get(obj.id) or ObjectState(name=obj.id)
        method = obj.methods().get(operation) or generic_methods(self, obj, state).get(operation)
        if method is None and not_implemented(obj, operation):
            raise KmsError(ErrorCode.NOT_IMPLEMENTED,
                           f"'{operation}' is not implemented by this media server")
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
        value = await method.handler(op_params)
        if operation == "getStats" and value == {} and isinstance(obj, Element):
            return element_stats(obj)
        return value

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
        await self.ownership.close()
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
