"""An in-memory media layer and TURN pool for driving a `Hub` without Redis, a media server
or aiortc: the unit tests of the call rules. (Fakes by design: these tests pin the hub's
decisions; the functional tests carry the same calls through the real parts.)"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kurento_ctl.pool import KurentoPool
from signaling.call import Call, CallKind
from signaling.candidates import CandidateFilter
from signaling.hub import Hub
from signaling.media import MediaListener
from turn.lease import TurnLease

OFFER = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
t=0 0
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=mid:0
a={direction}
a=rtpmap:111 opus/48000/2
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=mid:1
a={direction}
a=rtpmap:96 VP8/90000
""".replace("\n", "\r\n")
FINGERPRINT = ":".join(["AB"] * 32)
SEND_OFFER = OFFER.format(direction="sendrecv", fingerprint=FINGERPRINT)
RECV_OFFER = OFFER.format(direction="recvonly", fingerprint=FINGERPRINT)


@dataclass
class FakeEndpoints:
    subscriptions: dict[str, str] = field(default_factory=dict)


class FakeMedia:
    """Answers every negotiation at once; the test raises the media events by hand."""

    def __init__(self, call: Call, folder: Path, listener: MediaListener) -> None:
        self.call, self.folder, self.listener = call, folder, listener
        self.participants: dict[str, FakeEndpoints] = {}
        self.ice_states: dict[tuple[str, str], str] = {}
        self.filter = CandidateFilter()  # the watchdog's detail reads its browser tally
        self.recordings: list[Path] = []
        self.server: Any = None
        self.pipeline_id: str | None = f"pipeline-{call.id}"
        self.removed: list[str] = []
        self.closed: list[bool] = []
        self.candidates: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(self, pid: str, sdp: str, kinds: frozenset[str], *,
                      turn_url: str | None = None) -> str:
        await asyncio.sleep(0)  # a media server round trip yields to the loop
        self.participants.setdefault(pid, FakeEndpoints())
        self.recordings.append(self.folder / f"{pid}.webm")
        return "answer"

    async def subscribe(self, viewer: str, source: str, sdp: str, *,
                        turn_url: str | None = None) -> str:
        await asyncio.sleep(0)
        self.participants.setdefault(viewer, FakeEndpoints()).subscriptions[source] = "ep"
        return "answer"

    async def add_candidate(self, owner: str, target: str, candidate: dict[str, Any]) -> None:
        self.candidates.append((owner, target, candidate))

    async def remove(self, pid: str) -> None:
        self.removed.append(pid)
        self.participants.pop(pid, None)
        for entry in self.participants.values():
            entry.subscriptions.pop(pid, None)

    async def close(self, *, server_lost: bool = False) -> None:
        self.closed.append(server_lost)
        self.participants.clear()


class FakeProvider:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    async def revoke(self, lease: TurnLease) -> None:
        self.revoked.append(lease.username)


class FakeTurn:
    """Leases that take a loop turn to grant, like the Redis-backed pool."""

    def __init__(self) -> None:
        self.out: dict[str, TurnLease] = {}
        self.released: list[str] = []
        self.provider = FakeProvider()
        self.on_renewed: list[Any] = []
        self.size = 100

    async def lease(self, call_id: str, pid: str) -> TurnLease:
        await asyncio.sleep(0)
        lease = self.out.get(f"{call_id}/{pid}") or TurnLease(
            call_id=call_id, participant=pid, username=f"u-{pid}", credential="c",
            urls=("turn:127.0.0.1:3478",), expires=time.time() + 3600)
        self.out[lease.key] = lease
        return lease

    async def release(self, lease: TurnLease) -> None:
        self.released.append(lease.key)
        self.out.pop(lease.key, None)


class Socket:
    """A connection that keeps what the hub sent it, decoded."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.sent: list[dict[str, Any]] = []

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def close_soon(self) -> None:
        self.sent.append({"type": "(closed)"})

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]


def make_hub(tmp_path: Path, *, watchdog_timeout: float = 30.0, grace: float = 0.0,
             turn: FakeTurn | None = None) -> tuple[Hub, dict[str, FakeMedia]]:
    media: dict[str, FakeMedia] = {}

    def factory(call: Call, folder: Path, listener: Any) -> FakeMedia:
        media[call.id] = FakeMedia(call, folder, listener)
        return media[call.id]

    pool = KurentoPool(["ws://127.0.0.1:9/never-contacted"])  # never started
    hub = Hub(pool=pool, recordings_root=tmp_path, watchdog_timeout=watchdog_timeout,
              turn=turn, rejoin_grace=grace,  # type: ignore[arg-type]
              media_factory=factory)  # type: ignore[arg-type]
    return hub, media


def consultation(hub: Hub, kind: CallKind = CallKind.CONSULTATION) -> Call:
    return hub.create_call(kind, [("pat", "P", "patient"), ("doc", "D", "doctor")])
