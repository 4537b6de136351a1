"""`MediaWatchdog`: a call fails when media it expects has not flowed by its deadline.

Pure logic with time as an argument. Each expectation (media from the browser of one kind,
media towards the browser from one participant, the browser's own report of receiving it)
is armed with a deadline and cleared when the event that proves it arrives; `check(now)`
names the first expectation past its deadline. `WatchdogTimer` wraps it in `loop.call_at`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Expectation", "Expired", "MediaWatchdog", "WatchdogTimer"]


@dataclass(frozen=True, order=True)
class Expectation:
    participant: str
    direction: str  # "from-browser", "to-browser", "browser-report" or "recording"
    kind: str  # "audio" / "video", or the remote participant for to-browser/report
    source: str = ""

    def describe(self) -> str:
        if self.direction == "from-browser":
            return f"no {self.kind} from {self.participant}'s browser reached the media server"
        if self.direction == "to-browser":
            return f"no {self.kind} from {self.source} was sent towards {self.participant}"
        if self.direction == "recording":
            return f"{self.participant}'s recording never started"
        return f"{self.participant}'s browser reported no media from {self.source}"


#: Upstream first: when several expectations are due together, the one that explains the
#: others is named (no upload from a browser means nothing reaches the others' browsers).
CAUSES = ("from-browser", "recording", "to-browser", "browser-report")


@dataclass(frozen=True)
class Expired:
    expectation: Expectation
    detail: str


@dataclass
class MediaWatchdog:
    timeout: float
    deadlines: dict[Expectation, float] = field(default_factory=dict)
    satisfied: set[Expectation] = field(default_factory=set)

    def expect(self, expectation: Expectation, now: float) -> None:
        if expectation not in self.satisfied and expectation not in self.deadlines:
            self.deadlines[expectation] = now + self.timeout

    def satisfy(self, expectation: Expectation) -> bool:
        """Clears an expectation (armed or not yet armed); True if it was pending."""
        self.satisfied.add(expectation)
        return self.deadlines.pop(expectation, None) is not None

    def forget(self, participant: str) -> None:
        """Drops everything about a participant who left: pending and already proven, so a
        rejoin is watched afresh."""
        for e in [e for e in self.deadlines if participant in (e.participant, e.source)]:
            del self.deadlines[e]
        self.satisfied = {e for e in self.satisfied
                          if participant not in (e.participant, e.source)}

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values(), default=None)

    def check(self, now: float, detail: Callable[[Expectation], str] | None = None
              ) -> Expired | None:
        due = sorted((d, CAUSES.index(e.direction), e) for e, d in self.deadlines.items()
                     if d <= now)
        if not due:
            return None
        expectation = due[0][2]
        extra = detail(expectation) if detail else ""
        # The direction by name as well as in words: operators grep for it.
        context = ", ".join([f"direction {expectation.direction}", *([extra] if extra else [])])
        return Expired(expectation, f"{expectation.describe()} ({context})")

    @property
    def pending(self) -> bool:
        return bool(self.deadlines)


class WatchdogTimer:
    """Fires `on_expired` at the watchdog's next deadline, re-armed after every change."""

    def __init__(self, watchdog: MediaWatchdog, on_expired: Callable[[Expired], None],
                 detail: Callable[[Expectation], str] | None = None) -> None:
        self.watchdog = watchdog
        self._on_expired = on_expired
        self._detail = detail
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def rearm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        deadline = self.watchdog.next_deadline()
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        expired = self.watchdog.check(self._loop.time(), self._detail)
        if expired is not None:
            self._on_expired(expired)
        else:
            self.rearm()

    def now(self) -> float:
        return self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
