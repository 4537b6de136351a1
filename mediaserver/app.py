"""The WebSocket transport: `/kurento`, one JSON-RPC object per text frame."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web

from kurento_ctl.jsonrpc import ErrorCode, encode_error, encode_result, parse_request
from mediaserver.core import MediaServer, Session, _error_obj
from mediaserver.elements import KmsError

__all__ = ["create_app"]

log = logging.getLogger(__name__)

SERVER = web.AppKey("mediaserver", MediaServer)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
#: Serve each socket's requests strictly one after another, as KMS does (websocketpp reads
#: the next frame only after the handler answered); off, requests run concurrently.
SERIAL = web.AppKey("serial", bool)


async def kurento_socket(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    bound: Session | None = None
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def sender(text: str) -> None:
        queue.put_nowait(text)

    async def write() -> None:
        # One writer keeps replies and events in the order they were produced.
        while (text := await queue.get()) is not None:
            if ws.closed:
                return
            await ws.send_str(text)

    writer = asyncio.create_task(write())

    async def serve(text: str) -> None:
        nonlocal bound
        parsed = parse_request(text)
        if isinstance(parsed, str):
            queue.put_nowait(parsed)
            return
        try:
            result, session = await server.handle(parsed, bound)
        except KmsError as exc:
            error = _error_obj(exc)
            queue.put_nowait(encode_error(parsed.id, error["code"], error["message"],
                                          error.get("data", {}).get("type")))
            return
        except Exception as exc:
            log.exception("! %s failed", parsed.method)
            queue.put_nowait(encode_error(parsed.id, ErrorCode.INTERNAL_ERROR,
                                          f"Unexpected error while processing method: {exc}"))
            return
        if session is not None:
            # A reply carrying a session binds it to this socket; events follow it here.
            if bound is not None and bound is not session and bound.sender is sender:
                server.detach(bound)
            session.sender = sender
            bound = session
        queue.put_nowait(encode_result(parsed.id, result))

    tasks: set[asyncio.Task[None]] = set()
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and request.app[SERIAL]:
                await serve(msg.data)
            elif msg.type is WSMsgType.TEXT:
                # Requests run concurrently; a slow processOffer does not hold up a ping.
                task = asyncio.create_task(serve(msg.data))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif msg.type is WSMsgType.BINARY:
                queue.put_nowait(encode_error(None, ErrorCode.PARSE_ERROR, "Parse error.",
                                              "PARSE_ERROR"))
    finally:
        request.app[SOCKETS].discard(ws)
        for task in list(tasks):
            task.cancel()
        queue.put_nowait(None)
        await asyncio.gather(writer, *tasks, return_exceptions=True)
        for session in list(server.sessions.values()):
            if session.sender is sender:
                server.detach(session)
    return ws


async def other_path(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    if ws.can_prepare(request).ok:
        await ws.prepare(request)
        await ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"Invalid path")
        return ws
    raise web.HTTPNotFound()


def create_app(*, strict_candidates: bool = False, gc_grace: float = 240.0,
               recordings_root: Path | None = None, serial: bool = False) -> web.Application:
    app = web.Application()
    app[SERIAL] = serial
    app[SERVER] = MediaServer(strict_candidates=strict_candidates, gc_grace=gc_grace,
                              recordings_root=recordings_root)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[SERVER].close()

    async def going_away(app: web.Application) -> None:
        # Clients learn of the shutdown at once instead of waiting for a ping to go unanswered.
        sockets: set[web.WebSocketResponse] = app[SOCKETS]
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutdown")
                               for ws in list(sockets)), return_exceptions=True)

    app[SOCKETS] = set()
    app.on_shutdown.append(going_away)
    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/kurento", kurento_socket)
    app.router.add_get("/{tail:.*}", other_path)
    return app
