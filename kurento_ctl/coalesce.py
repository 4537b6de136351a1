"""Frames written to one WebSocket in one event-loop turn leave in one `send`: under load
every participant's trickled candidate is a request on the media server's one socket,
and one syscall per frame was the largest single cost of the hub's hot path
(bench.signalling --profile). The hub's browser sockets use it too.

aiohttp writes each WebSocket frame with its own `transport.write`; `coalesce` puts a
buffer between its frame writer and the socket's transport, flushed at the end of the
turn (`loop.call_soon`). Frames stay whole and in order. It reaches into aiohttp's
writer (`ws._writer.transport`, aiohttp 3.x); where that is not there it does nothing
and frames go out one by one as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["coalesce"]

log = logging.getLogger(__name__)


#: The first byte of an unfragmented close frame (FIN + opcode 8).
_CLOSE = b"\x88"


class _TurnBuffer:
    """Stands in for the transport of aiohttp's frame writer."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._flush_soon: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._parts.append(bytes(data))
        if self._parts[-1][:1] == _CLOSE:
            # A close frame leaves at once, with what came before it: aiohttp may close
            # the transport right after writing it, before the end of this turn.
            self.flush()
        elif self._flush_soon is None:
            self._flush_soon = self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        data, self._parts = b"".join(self._parts), []
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce(ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> bool:
    """Buffers `ws`'s frames per loop turn; False (and nothing changed) when aiohttp's
    writer is not as expected."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if writer is None or not isinstance(transport, asyncio.Transport):
        log.info("= aiohttp's WebSocket writer is not as expected: frames sent one by one")
        return False
    writer.transport = _TurnBuffer(transport, asyncio.get_running_loop())
    return True
