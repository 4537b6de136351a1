"""`Cluster`: this signalling node among the others on one Redis.

It places calls (claims a call nobody living runs, adopting it if it had begun on a node
that died), carries sockets to the node running their call, adopts the calls of nodes that
stop renewing their lease, gives up the calls another node took while this one was frozen,
and on a clean stop (drain) leaves its calls to the others at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from cluster.ownership import NodeLease, Ownership, stop_task
from cluster.relay import RelayBus, RemoteError, RemoteSocket
from mis.history import CallStore
from signaling.call import Call, CallState
from signaling.errors import CallError
from signaling.hub import Hub
from signaling.placement import abandon
from signaling.session import ClientSession, SessionConfig
from signaling.takeover import take_over
from signaling.teardown import expire_here
from turn.lease import ice_servers_for

__all__ = ["Cluster"]

log = logging.getLogger(__name__)

BEGUN = (CallState.CONNECTING.value, CallState.LIVE.value)
FINISHED = (CallState.ENDED.value, CallState.FAILED.value)
#: Calls of dead nodes taken over at once (as at start-up, telemed.recovery).
ADOPT_AT_ONCE = 8


class Cluster:
    def __init__(self, redis: aioredis.Redis, hub: Hub, store: CallStore,
                 config: SessionConfig, *, ttl: float,
                 adopt_interval: float | None = None, adopt: bool = True) -> None:
        self.hub = hub
        self.store = store
        self.config = config
        self.node_id = hub.node_id
        self.lease = NodeLease(redis, self.node_id, ttl=ttl)
        self.ownership = Ownership(redis, self.lease)
        self.bus = RelayBus(redis, self.node_id, alive=self.lease.alive,
                            check_interval=ttl / 3)
        self.adopt_interval = adopt_interval if adopt_interval is not None else ttl / 3
        self._placing: dict[str, asyncio.Future[str]] = {}
        self._served: set[asyncio.Task[None]] = set()
        self._adopter: asyncio.Task[None] | None = None
        self.adopted = 0
        #: Whether this node takes over begun calls of nodes that are gone
        #: (`calls.take_over`); without, such calls are left to their own node's restart.
        self.adopt = adopt
        #: Once the service serves, an adopted call's rejoin grace starts at adoption; at
        #: start-up it starts when serving begins (`hold_places`).
        self.serving = False
        #: Before this node gives its calls up on a clean stop: what it knows of them is
        #: written (the history's `settle`), so the node adopting them reads it all.
        self.before_release: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------------ wiring

    def attach(self) -> None:
        """Makes the hub and the socket handler several-node aware."""
        self.hub.placement = self
        self.hub.may_act = lambda call_id: self.lease.valid() or not self.ownership.others
        self.hub.hooks.append(self._on_event)
        self.config.relay = self.bus
        self.bus.on_open = self._serve_relayed
        self.bus.handlers.update(end=self._end, kick=self._kick, precheck=self._precheck,
                                 expire=self._expire)
        self.lease.on_lapse = self.reconcile
        self.hub.on_suspend.append(self.drain)

    async def start(self) -> None:
        with contextlib.suppress(aioredis.RedisError, OSError):  # Redis away: the lease retries
            await self.lease.beat()
            await self.ownership.dead_nodes()  # learns of the others
        await self.bus.start()
        self.lease.start()

    def start_adopting(self) -> None:
        self.serving = True
        if not self.adopt:
            return
        self._adopter = asyncio.create_task(self._adopt_loop(), name="adopter")

    async def drain(self) -> None:
        """A clean stop: what this node knows of its calls is written, then its lease is
        dropped so the others adopt the calls now, not after the lease runs out."""
        for step in self.before_release:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(step(), 5.0)
        if self._adopter is not None:
            self._adopter.cancel()
        await self.lease.stop(release=True)
        self.bus.drop_all()

    async def close(self) -> None:
        if self._adopter is not None:
            await stop_task(self._adopter)
        await self.lease.stop(release=True)
        await self.bus.close()
        for task in list(self._served):
            with contextlib.suppress(Exception):
                await task

    # ------------------------------------------------------------------ placement

    async def place(self, call_id: str) -> str:
        # A claim under way first: the call is held from the claim on, but ready for its
        # sockets only once adopted.
        pending = self._placing.get(call_id)
        if pending is not None:
            return await asyncio.shield(pending)
        if self.ownership.holds(call_id):
            return self.node_id
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._placing[call_id] = future
        try:
            node = await self._claim(call_id)
            future.set_result(node)
            return node
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._placing[call_id]

    def epoch(self, call_id: str) -> int | None:
        return self.ownership.held.get(call_id)

    async def forward(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.bus.ask(node, op, args, timeout=self.hub.store_timeout)
        except RemoteError as exc:
            raise CallError(exc.message, code=exc.code) from None

    async def _run_here(self, call_id: str) -> Call:
        """A call an operation from another node names: it must run here."""
        if await self.place(call_id) != self.node_id or (call := self.hub.calls.get(call_id)) \
                is None:
            raise CallError("the call moved; retry", code="service.unavailable")
        return call

    async def _end(self, args: dict[str, Any]) -> dict[str, Any]:
        call = await self._run_here(str(args["call"]))
        await self.hub.end(call.id)
        return call.describe()

    async def _kick(self, args: dict[str, Any]) -> dict[str, Any]:
        call = await self._run_here(str(args["call"]))
        await self.hub.kick(call.id, str(args["participant"]))
        return call.describe()

    async def _expire(self, args: dict[str, Any]) -> dict[str, Any]:
        call = await self._run_here(str(args["call"]))
        return {"expired": await expire_here(self.hub, call.id, str(args["detail"]))}

    async def _precheck(self, args: dict[str, Any]) -> dict[str, Any]:
        call = await self._run_here(str(args["call"]))
        pid = str(args["participant"])
        if pid not in call.participants or call.participants[pid].extra.get("removed"):
            raise CallError("you are not a participant of this call", code="call.not_yours")
        lease = await self.hub.session(call).lease_turn(pid)
        return {"iceServers": ice_servers_for(lease)}

    async def _claim(self, call_id: str) -> str:
        call = self.hub.calls.get(call_id)
        snap = None
        if call is None:
            snap = await self.store.get(call_id, limit=1)
            if snap is None or snap["state"] in FINISHED:
                return self.node_id  # nothing to run: the hub answers not found / ended
            if snap["state"] in BEGUN and not self.adopt:
                # Without takeover this node runs no call that had begun elsewhere: it
                # relays to a living owner, else the hub answers not found.
                owner, _ = await self.ownership.owner(call_id)
                if owner is not None and owner != self.node_id \
                        and await self.lease.alive(owner):
                    return owner
                return self.node_id
        node, epoch = await self.ownership.claim(call_id)
        if node != self.node_id:
            return node
        if call is None and snap is not None and snap["state"] in BEGUN:
            # It had begun on a node that is gone: its media runs on; adopt it.
            snap = await self.store.get(call_id)
            assert snap is not None
            call = await take_over(self.hub, snap)
            if self.serving and (session := self.hub.sessions.get(call_id)) is not None:
                session.hold_places()
            self.adopted += 1
        if call is not None:
            call.epoch = epoch
        return self.node_id

    async def _on_event(self, event: Any, call: Any, data: dict[str, Any]) -> None:
        if call.finished and self.ownership.holds(call.id):
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self.ownership.release(call.id)

    # ------------------------------------------------------------------ adoption

    async def adopt_dead(self) -> list[str]:
        """Claims and takes over the calls of every node no longer heard of."""
        gate = asyncio.Semaphore(ADOPT_AT_ONCE)

        async def one(node: str, call_id: str) -> str | None:
            async with gate:
                try:
                    return call_id if await self.place(call_id) == self.node_id else None
                except Exception:
                    log.exception("! adopting a call of node %s failed", node,
                                  extra={"call_id": call_id})
                    return None

        found = [(node, call_id) for node in await self.ownership.dead_nodes()
                 for call_id in await self.ownership.calls_of(node)]
        # Side by side: each takeover is ~30 media-server requests, one after another
        # would make the last call of a busy node wait for all the others
        # (bench.nodes: 8 calls adopted one by one took up to 13 s).
        taken = [c for c in await asyncio.gather(*(one(n, c) for n, c in found)) if c]
        if taken:
            log.warning("! adopted %d calls of nodes that are gone", len(taken))
        return taken

    async def _adopt_loop(self) -> None:
        while True:
            await asyncio.sleep(self.adopt_interval)
            if not self.lease.valid():
                continue
            try:
                await self.adopt_dead()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("! looking for calls to adopt failed: %s", type(exc).__name__)
            except Exception:
                log.exception("! looking for calls to adopt failed")

    async def reconcile(self) -> None:
        """After a lapse of this node's lease: the calls another node took meanwhile are
        given up here, untouched."""
        for call_id in await self.ownership.lost():
            abandon(self.hub, call_id)

    # ------------------------------------------------------------------ relayed sockets

    def _serve_relayed(self, sock: RemoteSocket, peer: str, edge: str) -> None:
        session = ClientSession(sock, self.hub, self.config, f"{peer} via {edge}",
                                relayed=True)
        task = asyncio.create_task(session.run())
        self._served.add(task)
        task.add_done_callback(self._served.discard)

