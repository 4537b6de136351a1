"""The media watchdog with a manual clock, and its timer on the real loop."""

from __future__ import annotations

import asyncio

import pytest

from signaling.watchdog import Expectation, Expired, MediaWatchdog, WatchdogTimer
from tests.helpers import within

AUDIO = Expectation("pat", "from-browser", "audio")
VIDEO = Expectation("pat", "from-browser", "video")
TO = Expectation("pat", "to-browser", "video", "doc")


def test_nothing_expires_before_the_deadline_and_the_first_due_is_named() -> None:
    """An expectation expires at its deadline, not before, named with who and what is missing."""
    wd = MediaWatchdog(timeout=10)
    wd.expect(AUDIO, now=100)
    wd.expect(TO, now=101)
    assert wd.check(109.9) is None
    expired = wd.check(110.0)
    assert isinstance(expired, Expired) and expired.expectation == AUDIO
    assert "audio" in expired.detail and "pat" in expired.detail


def test_proof_clears_an_expectation_even_if_it_came_first() -> None:
    """Proof before arming keeps an expectation from being armed; proof after clears it."""
    wd = MediaWatchdog(timeout=10)
    assert wd.satisfy(VIDEO) is False  # media flowed before we armed for it
    wd.expect(VIDEO, now=0)
    wd.expect(AUDIO, now=0)
    assert wd.satisfy(AUDIO) is True
    assert not wd.pending and wd.check(1000) is None


def test_forgetting_a_participant_drops_what_involves_them() -> None:
    """Forgetting someone drops expectations where they are the participant or the source."""
    wd = MediaWatchdog(timeout=10)
    wd.expect(TO, now=0)
    wd.expect(Expectation("doc", "from-browser", "audio"), now=0)
    wd.forget("doc")
    assert not wd.pending


def test_of_expectations_due_together_the_upstream_cause_is_named() -> None:
    """Of expectations due together, a missing upload is named before the report it explains."""
    wd = MediaWatchdog(timeout=10)
    report = Expectation("doc", "browser-report", "media", "pat")  # sorts before AUDIO
    wd.expect(report, now=0)
    wd.expect(AUDIO, now=0)
    expired = wd.check(10)
    assert expired is not None and expired.expectation == AUDIO


def test_a_participant_forgotten_and_back_is_watched_again() -> None:
    """Proof is forgotten with its participant, so after a rejoin it can expire again."""
    wd = MediaWatchdog(timeout=10)
    wd.expect(TO, now=0)
    wd.satisfy(TO)
    wd.forget("doc")  # doc dropped and rejoins: what was proven about doc no longer holds
    wd.expect(TO, now=50)
    expired = wd.check(60)
    assert expired is not None and expired.expectation == TO


def test_the_detail_names_the_direction_and_the_ice_state() -> None:
    """The detail gives the missing media in words, the direction by name and the ICE state."""
    wd = MediaWatchdog(timeout=1)
    wd.expect(AUDIO, now=0)
    expired = wd.check(2, detail=lambda e: "ICE CONNECTING")
    assert expired is not None
    assert expired.detail == ("no audio from pat's browser reached the media server "
                              "(direction from-browser, ICE CONNECTING)")


@pytest.mark.parametrize(("expectation", "words"), [
    (TO, "no video from doc was sent towards pat (direction to-browser)"),
    (Expectation("pat", "browser-report", "media", "doc"),
     "pat's browser reported no media from doc (direction browser-report)"),
    (Expectation("pat", "recording", "file"),
     "pat's recording never started (direction recording)"),
])
def test_every_kind_of_expectation_says_what_is_missing(expectation: Expectation,
                                                        words: str) -> None:
    """Each direction is described in its own words, followed by its name."""
    wd = MediaWatchdog(timeout=1)
    wd.expect(expectation, now=0)
    expired = wd.check(1)
    assert expired is not None and expired.detail == words


async def test_the_timer_fires_at_the_deadline_and_not_after_proof() -> None:
    """On the real loop the timer fires no earlier than the deadline and skips proven ones."""
    wd = MediaWatchdog(timeout=0.05)
    fired: asyncio.Queue[Expired] = asyncio.Queue()
    timer = WatchdogTimer(wd, fired.put_nowait)
    start = timer.now()
    wd.expect(AUDIO, timer.now())
    wd.expect(VIDEO, timer.now())
    wd.satisfy(VIDEO)
    timer.rearm()
    expired = await within(fired.get(), 2, "watchdog")
    assert expired.expectation == AUDIO
    assert timer.now() - start >= 0.05
    wd.satisfy(AUDIO)
    timer.rearm()
    timer.cancel()
    assert fired.empty()


async def test_the_timer_passes_the_callers_context_into_the_detail() -> None:
    """The timer's context callback (the hub's ICE state) ends up in the fired detail."""
    wd = MediaWatchdog(timeout=0.01)
    fired: asyncio.Queue[Expired] = asyncio.Queue()
    timer = WatchdogTimer(wd, fired.put_nowait, detail=lambda e: f"ICE FAILED at {e.kind}")
    wd.expect(AUDIO, timer.now())
    timer.rearm()
    expired = await within(fired.get(), 2, "watchdog")
    assert expired.detail.endswith("(direction from-browser, ICE FAILED at audio)")


async def test_a_timer_rearmed_with_nothing_pending_can_be_rearmed_again() -> None:
    """A rearm with nothing pending drops the old timer, so a later expectation still fires."""
    wd = MediaWatchdog(timeout=0.01)
    fired: asyncio.Queue[Expired] = asyncio.Queue()
    timer = WatchdogTimer(wd, fired.put_nowait)
    wd.expect(AUDIO, timer.now())
    timer.rearm()
    wd.satisfy(AUDIO)
    timer.rearm()
    wd.expect(VIDEO, timer.now())
    timer.rearm()
    expired = await within(fired.get(), 2, "watchdog")
    assert expired.expectation == VIDEO and fired.empty()
