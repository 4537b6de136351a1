"""Sessions, who owns which object, and the garbage collector, as KMS 7.3's MediaSet does it.

KMS-SOURCE-NOTES.md items 6 and 8:
- a session that touches an object (create, invoke, subscribe, describe, ref) co-owns it,
  and its pipeline; a child created later is co-owned by every owner of its pipeline;
- an object is destroyed only when no session owns it any more; a pipeline takes its
  children along;
- the collector runs every `period` seconds (KMS: `garbageCollectorPeriod`, 240): each run
  collects the sessions whose in-use flag was already clear and clears everyone's flag.
  The flag is set by a touch, by `connect`/`keepAlive`, and every period/4 for each session
  bound to an open socket. A session whose socket closed is therefore collected 0.75 to 2
  periods later (180-480 s for KMS's default);
- `ServerManager.getPipelines` makes the internal session "" co-own every object and marks
  it in use: while anyone polls it, nothing is ever collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mediaserver.elements import MediaObjectImpl, MediaPipelineImpl

__all__ = ["INTERNAL_SESSION", "Ownership", "Session"]

log = logging.getLogger(__name__)

Sender = Callable[[str], None]
#: The session KMS's ServerManager uses for its own lookups (`getPipelines`).
INTERNAL_SESSION = ""


@dataclass
class Session:
    id: str
    sender: Sender | None = None
    subscriptions: dict[str, tuple[str, str]] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    in_use: bool = True
    #: KMS's MediaSet learns of a session only when it touches an object; `connect` with
    #: the id of one that never did is 40007 though the id was handed out.
    known: bool = False

    def subscribed(self, object_id: str, event_type: str) -> bool:
        return (object_id, event_type) in self.subscriptions.values()


class Ownership:
    def __init__(self, period: float, objects: dict[str, MediaObjectImpl],
                 release: Callable[[MediaObjectImpl], Awaitable[None]]) -> None:
        self.period = period
        self.sessions: dict[str, Session] = {}
        self._objects = objects
        self._release = release
        self._task: asyncio.Task[None] | None = None
        #: Collector runs so far, and an event set after each (tests await runs).
        self.runs = 0
        self.ran = asyncio.Event()

    def session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = Session(session_id)
        if self._task is None:
            self._task = asyncio.create_task(self._collector(), name="mediaserver-gc")
        return session

    def touch(self, session: Session, obj: MediaObjectImpl) -> None:
        """`session` used `obj`: it co-owns it and its pipeline from now on."""
        session.in_use = session.known = True
        session.owned.add(obj.id)
        if obj.pipeline is not None and obj.pipeline is not obj:
            session.owned.add(obj.pipeline.id)

    def created(self, session: Session, obj: MediaObjectImpl) -> None:
        self.touch(session, obj)
        if obj.pipeline is not None and obj.pipeline is not obj:
            for other in self.sessions.values():
                if obj.pipeline.id in other.owned:
                    other.owned.add(obj.id)

    def owners(self, object_id: str) -> list[Session]:
        return [s for s in self.sessions.values() if object_id in s.owned]

    def forget(self, object_id: str) -> None:
        for session in self.sessions.values():
            session.owned.discard(object_id)

    async def unref(self, session: Session, obj: MediaObjectImpl) -> None:
        session.owned.discard(obj.id)
        if not self.owners(obj.id):
            await self._release(obj)

    async def unref_session(self, session: Session) -> None:
        """Drops the session; destroys what nobody else owns (pipelines first, which takes
        their children along; then lone elements of pipelines others still own)."""
        self.sessions.pop(session.id, None)
        owned = [self._objects[i] for i in sorted(session.owned) if i in self._objects]
        log.info("= session %r collected, owning %d objects", session.id, len(owned))
        for obj in sorted(owned, key=lambda o: not isinstance(o, MediaPipelineImpl)):
            if not obj.released and not self.owners(obj.id):
                await self._release(obj)

    async def _collector(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.period / 4)
            ticks += 1
            for session in self.sessions.values():
                if session.sender is not None:
                    session.in_use = True  # the transport's keepalive of bound sessions
            if ticks % 4:
                continue
            for session in list(self.sessions.values()):
                if session.in_use:
                    session.in_use = False
                else:
                    await self.unref_session(session)
            self.runs += 1
            self.ran.set()
            self.ran = asyncio.Event()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
