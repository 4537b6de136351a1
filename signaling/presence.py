"""Who is connected to which call, joined or not: a consultant waiting to be rung, a
patient on the pre-call page. The seam where several nodes will later learn of each
other's sockets."""

from __future__ import annotations

from signaling.participant_session import Connection

__all__ = ["Presence"]


class Presence:
    def __init__(self) -> None:
        self.online: dict[str, dict[str, Connection]] = {}

    def attach(self, call_id: str, pid: str, conn: Connection) -> None:
        self.online.setdefault(call_id, {})[pid] = conn

    def detach(self, call_id: str, pid: str, conn: Connection) -> None:
        online = self.online.get(call_id, {})
        if online.get(pid) is conn:
            del online[pid]
        if not online:
            self.online.pop(call_id, None)

    def get(self, call_id: str, pid: str) -> Connection | None:
        return self.online.get(call_id, {}).get(pid)

    def drop(self, call_id: str, pid: str) -> None:
        self.online.get(call_id, {}).pop(pid, None)

    def pop_call(self, call_id: str) -> dict[str, Connection]:
        return self.online.pop(call_id, {})

    def calls(self) -> set[str]:
        return {cid for cid, conns in self.online.items() if conns}

    def __contains__(self, call_id: object) -> bool:
        return call_id in self.online
