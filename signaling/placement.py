"""Where a call runs when several signalling nodes share one Redis.

`signaling` defines the seam and `cluster` fills it: `Placement.place` says which node
runs a call (claiming it for this node when no living node has it), `Hub.find` raises
`CallElsewhere` for a call another node runs (its sockets are carried there, its API
operations `forward`ed), and `Hub.may_act` is false while this node's ownership is in
doubt (its lease lapsed: a freeze), so that it ends nothing and drops no media another
node may have adopted meanwhile; `abandon` then gives up, untouched, what another node took.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from signaling.errors import CallElsewhere, CallError
from signaling.protocol import encode
from signaling.tokens import JoinClaims

if TYPE_CHECKING:
    from signaling.hub import Hub

__all__ = ["Placement", "abandon", "acting", "forward", "in_doubt", "place",
           "precheck_elsewhere"]

log = logging.getLogger(__name__)


class Placement(Protocol):
    async def place(self, call_id: str) -> str:
        """The node that runs the call: this one if it claimed it (adopting it if it had
        begun on a node that is gone)."""

    def epoch(self, call_id: str) -> int | None:
        """The fencing epoch under which this node holds the call."""

    async def forward(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Runs `op` ("end", "kick") on the node that runs the call; its answer."""


async def place(hub: Hub, call_id: str) -> None:
    """Raises `CallElsewhere` when another node runs the call."""
    if hub.placement is None:
        return
    try:
        async with asyncio.timeout(hub.store_timeout):
            node = await hub.placement.place(call_id)
    except CallElsewhere:
        raise
    except Exception as exc:
        log.error("! cannot tell which node runs call %s: %s", call_id, type(exc).__name__)
        raise CallError("the call store cannot be reached; retry shortly",
                        code="service.unavailable") from None
    if node != hub.node_id:
        # A copy from before another node took it (booked here, say) is stale now.
        if (call := hub.calls.get(call_id)) is not None and not call.finished:
            hub.calls.pop(call_id, None)
        raise CallElsewhere(node)


async def forward(hub: Hub, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """An API operation on a call another node runs, run there."""
    if hub.placement is None:
        raise CallError("no such call", code="call.not_found")
    return await hub.placement.forward(node, op, args)


async def precheck_elsewhere(hub: Hub, node: str, claims: JoinClaims) -> list[dict[str, Any]]:
    """The pre-call network check's TURN credentials, from the node running the call."""
    answer = await forward(hub, node, "precheck", {"call": claims.call_id,
                                                   "participant": claims.subject})
    return list(answer["iceServers"])


def in_doubt(hub: Hub, call_id: str, retry: Callable[[], Awaitable[None]]) -> bool:
    """True, and `retry` in a second, while this node may not act on the call: woken
    from a freeze, say, the media a closing socket would drop may be another node's now."""
    if hub.may_act(call_id):
        return False
    asyncio.get_running_loop().call_later(1.0, lambda: hub.spawn(retry(), call_id))
    return True


def acting(hub: Hub, call_id: str) -> None:
    """Refuses to change a call while this node's ownership of it is in doubt."""
    if not hub.may_act(call_id):
        raise CallError("this node is confirming that it still runs the call; retry "
                        "shortly", code="service.unavailable")


def abandon(hub: Hub, call_id: str) -> None:
    """Another node owns the call now: whoever is still connected here is sent away to
    reconnect; nothing is released or told."""
    session = hub.sessions.pop(call_id, None)
    hub.calls.pop(call_id, None)
    audience = dict(hub.presence.pop_call(call_id))
    if session is not None:
        session.freeze()
        audience.update(session.connected())
    hub.referrals.ringing.stop(call_id)
    message = encode("serviceRestarting")
    for conn in audience.values():
        conn.send(message)
        conn.close_soon()
    log.warning("! call given up: another node owns it now", extra={"call_id": call_id})
