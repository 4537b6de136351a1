"""`Timeline`: what happened to a call, in order, numbered so that the history can append
each entry once instead of rewriting the whole call, and capped twice: entries in memory
(`limit`) and client diagnostics per call (`client_limit`)."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CLIENT_EVENTS_CAPPED", "CLIENT_EVENT_CAP", "TIMELINE_LIMIT", "Timeline"]

#: Entries a call keeps (in memory, and in the history's list for it).
TIMELINE_LIMIT = 2000
#: `client.*` entries (a browser's `clientEvent` diagnostics) kept per call; later ones are
#: only counted (`clientEventsDropped`), so one socket cannot grow a call's history
#: without bound while the call's own events (state, joins, media) are still all kept.
CLIENT_EVENT_CAP = 500
#: The entry written once, when a call's client diagnostics reach the cap.
CLIENT_EVENTS_CAPPED = "client-events-capped"
#: `joins` summarises at most this many (re)joins, the latest.
JOINS_KEPT = 200


@dataclass
class Timeline:
    """Entries are numbered from 0 for the life of the call (restores included): entry
    `seq - len(events) + i` is `events[i]`."""

    limit: int = TIMELINE_LIMIT
    client_limit: int = CLIENT_EVENT_CAP
    events: deque[dict[str, Any]] = field(default_factory=deque)
    #: Entries pushed out of memory by `limit`.
    dropped: int = 0
    #: Entries ever added: the number the next one gets.
    seq: int = 0
    #: Entries below this number were handed to the history (`take_unwritten`).
    written: int = 0
    client_events: int = 0
    #: Client diagnostics refused by `client_limit`.
    client_dropped: int = 0
    #: What the history summarises, kept as entries arrive so that it survives the
    #: oldest entries leaving memory: when each call state was first entered, the
    #: (re)joins, and each participant's selected ICE pairs.
    states: dict[str, float] = field(default_factory=dict)
    joins: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=JOINS_KEPT))
    networks: dict[str, list[str]] = field(default_factory=dict)
    #: Called after each entry is added (the history schedules a write of the call).
    listener: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def add(self, what: str, now: float | None = None, **data: Any) -> None:
        if what.startswith("client."):
            if self.client_events >= self.client_limit:
                self.client_dropped += 1
                if self.client_dropped == 1:
                    self._append({"at": now if now is not None else time.time(),
                                  "event": CLIENT_EVENTS_CAPPED, "limit": self.client_limit,
                                  **({"participant": data["participant"]}
                                     if "participant" in data else {})})
                return
            self.client_events += 1
        self._append({"at": now if now is not None else time.time(), "event": what, **data})

    def _append(self, entry: dict[str, Any]) -> None:
        if len(self.events) >= self.limit:
            self.events.popleft()
            self.dropped += 1
        self.events.append(entry)
        self.seq += 1
        self._summarise(entry)
        if self.listener is not None:
            self.listener()

    def _summarise(self, e: dict[str, Any]) -> None:
        what = e.get("event")
        if what == "state":
            self.states.setdefault(str(e.get("state")), e["at"])
        elif what in ("joined", "rejoined"):
            self.joins.append({"participant": e.get("participant"), "at": e["at"]})
        elif what == "ice-pair":
            # The browser's end of each selected ICE pair: host (same network), srflx/prflx
            # (through NAT), relay (through TURN); with udp or tcp.
            seen = self.networks.setdefault(str(e.get("participant")), [])
            if e.get("remote") not in seen:
                seen.append(str(e.get("remote")))

    def restore(self, entries: Iterable[dict[str, Any]], stored_seq: int,
                client_dropped: int = 0) -> None:
        """Starts over from the history's entries (the last `stored_seq` numbers end at);
        a history written before entries were numbered has `stored_seq` 0, and its entries
        are then written again, numbered from 0."""
        self.events.clear()
        self.states.clear()
        self.joins.clear()
        self.networks.clear()
        self.client_events, self.client_dropped = 0, client_dropped
        for entry in entries:
            if len(self.events) >= self.limit:
                self.events.popleft()
            self.events.append(entry)
            self._summarise(entry)
            if str(entry.get("event", "")).startswith("client."):
                self.client_events += 1
        self.seq = max(stored_seq, len(self.events))
        self.written = stored_seq
        self.dropped = self.seq - len(self.events)

    def take_unwritten(self) -> tuple[int, list[dict[str, Any]]]:
        """The entries not yet handed to the history and the number of the first; marks
        them handed. Entries that left memory before that are skipped (the number says so)."""
        count = min(self.seq - self.written, len(self.events))
        first = self.seq - count
        taken = list(itertools.islice(self.events, len(self.events) - count, None))
        self.written = self.seq
        return first, taken

    def page(self, start: int | None, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """Up to `limit` entries from number `start` (the oldest kept when None or gone)."""
        oldest = self.seq - len(self.events)
        first = oldest if start is None else min(max(start, oldest), self.seq)
        index = first - oldest
        return first, list(itertools.islice(self.events, index, index + max(0, limit)))

    def as_list(self) -> list[dict[str, Any]]:
        return list(self.events)
