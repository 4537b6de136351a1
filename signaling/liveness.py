"""The call's two media verdicts, as pure decisions with time as an argument (like the
watchdog): is the call live yet, and which interrupted flows are due to be reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["FlowKey", "MediaLoss", "ready_for_live"]

#: (endpoint owner, target, kind): target "publish" is the owner's upload, else the source
#: the owner receives.
FlowKey = tuple[str, str, str]


def ready_for_live(*, publishers: Iterable[str], recording: Iterable[str],
                   watchdog_pending: bool, subscribed: Iterable[tuple[str, str]],
                   reported: Iterable[tuple[str, str]]) -> bool:
    """A call goes live only when at least two people publish, every publisher's recorder
    records, no media expectation is still open, and every publisher receives every other
    (its endpoint subscribed, and its browser reported media arriving).

    Pairs are (viewer, source). Expectations are armed only once a subscription is answered,
    so an empty watchdog alone could be early: the pairs are checked as well.
    """
    people = set(publishers)
    if len(people) < 2 or watchdog_pending or not people <= set(recording):
        return False
    expected = {(a, b) for a in people for b in people if a != b}
    return expected <= set(subscribed) and expected <= set(reported)


@dataclass
class MediaLoss:
    """Flows that stopped mid-call. A stop is reported once it has lasted `report_after`
    seconds (a blip is not worth telling anyone); a flow that comes back after being
    reported is reported restored."""

    report_after: float
    #: When each flow stopped; None once its stop was reported.
    stopped: dict[FlowKey, float | None] = field(default_factory=dict)

    def stop(self, key: FlowKey, now: float) -> None:
        self.stopped.setdefault(key, now)

    def resume(self, key: FlowKey) -> bool:
        """The flow is back: True when its loss had been reported (tell them it is back)."""
        return key in self.stopped and self.stopped.pop(key) is None

    def due(self, now: float) -> list[FlowKey]:
        """Stops that lasted long enough, each returned once."""
        out = [k for k, at in self.stopped.items()
               if at is not None and now - at >= self.report_after]
        for key in out:
            self.stopped[key] = None
        return out

    def next_deadline(self) -> float | None:
        times = [at for at in self.stopped.values() if at is not None]
        return min(times) + self.report_after if times else None

    def forget(self, participant: str) -> None:
        """A participant's flows, sent or received, no longer count."""
        for key in [k for k in self.stopped if participant in (k[0], k[1])]:
            del self.stopped[key]
