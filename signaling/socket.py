"""What a browser session needs of its socket (aiohttp's, or one another node relays),
the relay that carries a socket to the node running its call, and the per-socket rate
limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import WSMessage, web

__all__ = ["RateLimit", "Relay", "Socket"]


class Socket(Protocol):
    """What a session needs of its WebSocket: aiohttp's, or a socket another node relays."""

    @property
    def closed(self) -> bool: ...

    def __aiter__(self) -> AsyncIterator[WSMessage]: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class Relay(Protocol):
    """Carries a socket whose call runs on another node there (several nodes)."""

    async def carry(self, ws: web.WebSocketResponse, owner: str, first: str,
                    peer: str) -> None: ...


class RateLimit:
    """A token bucket; time is an argument so tests need no clock."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
