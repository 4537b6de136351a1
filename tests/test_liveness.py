"""The call's media verdicts as pure functions of their facts and of time: when a call may go
live, and when an interrupted flow is due to be reported (signaling/liveness.py)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from signaling.liveness import FlowKey, MediaLoss, ready_for_live

PAIRS = [("pat", "doc"), ("doc", "pat")]


def verdict(*, publishers: Iterable[str] = ("pat", "doc"),
            recording: Iterable[str] = ("pat", "doc"), watchdog_pending: bool = False,
            subscribed: Iterable[tuple[str, str]] = PAIRS,
            reported: Iterable[tuple[str, str]] = PAIRS) -> bool:
    return ready_for_live(publishers=publishers, recording=recording,
                          watchdog_pending=watchdog_pending, subscribed=subscribed,
                          reported=reported)


def test_two_publishers_with_everything_proven_are_live() -> None:
    """Two recorded publishers, nothing pending, each receiving the other: the call is live."""
    assert verdict() is True


@pytest.mark.parametrize("publishers", [(), ("pat",), ("pat", "pat")])
def test_fewer_than_two_people_publishing_is_never_live(publishers: tuple[str, ...]) -> None:
    """Nobody or one person publishing (twice counts once) is never live, whatever else holds."""
    assert verdict(publishers=publishers, recording=("pat", "doc")) is False


def test_an_open_media_expectation_keeps_the_call_connecting() -> None:
    """A watchdog expectation still pending refuses live even with every pair proven."""
    assert verdict(watchdog_pending=True) is False


@pytest.mark.parametrize("recording", [(), ("pat",), ("doc",)])
def test_every_publisher_must_be_recorded(recording: tuple[str, ...]) -> None:
    """A publisher whose recorder does not record keeps the call from going live."""
    assert verdict(recording=recording) is False


def test_recorders_of_people_not_publishing_do_not_matter() -> None:
    """Recording is required of publishers only; an extra recorder changes nothing."""
    assert verdict(recording=("pat", "doc", "observer")) is True


@pytest.mark.parametrize("missing", PAIRS)
def test_every_viewer_must_be_subscribed_to_every_other(missing: tuple[str, str]) -> None:
    """A missing subscription refuses live even when the browser already reports the media."""
    subscribed = [p for p in PAIRS if p != missing]
    assert verdict(subscribed=subscribed) is False


@pytest.mark.parametrize("missing", PAIRS)
def test_every_viewer_must_report_media_from_every_other(missing: tuple[str, str]) -> None:
    """A browser that has not reported media arriving from another publisher refuses live."""
    reported = [p for p in PAIRS if p != missing]
    assert verdict(reported=reported) is False


def test_three_publishers_need_all_six_pairs() -> None:
    """Three publishers need all six ordered pairs; five of them are not enough."""
    people = ("a", "b", "c")
    pairs = [(x, y) for x in people for y in people if x != y]
    assert len(pairs) == 6
    assert verdict(publishers=people, recording=people, subscribed=pairs, reported=pairs)
    assert not verdict(publishers=people, recording=people, subscribed=pairs,
                       reported=pairs[1:])


def test_the_facts_may_come_as_one_shot_iterables() -> None:
    """Generators are read once each and give the same verdict as lists."""
    assert verdict(publishers=iter(["pat", "doc"]), recording=iter(["pat", "doc"]),
                   subscribed=iter(PAIRS), reported=iter(PAIRS)) is True


AUDIO: FlowKey = ("pat", "publish", "audio")
VIDEO: FlowKey = ("doc", "pat", "video")


def test_a_stop_is_due_exactly_when_it_lasted_the_delay_and_only_once() -> None:
    """A stop is due at exactly report_after seconds, not before, and is returned only once."""
    loss = MediaLoss(report_after=2.0)
    loss.stop(AUDIO, now=10.0)
    assert loss.due(11.999) == []
    assert loss.due(12.0) == [AUDIO]
    assert loss.due(13.0) == [] and loss.due(100.0) == []
    assert loss.stopped == {AUDIO: None}


def test_a_repeated_stop_keeps_the_first_time() -> None:
    """Stop events repeated while the flow is still down do not push its report back."""
    loss = MediaLoss(report_after=2.0)
    loss.stop(AUDIO, now=10.0)
    loss.stop(AUDIO, now=11.5)
    assert loss.next_deadline() == 12.0
    assert loss.due(12.0) == [AUDIO]


def test_a_reported_stop_is_not_armed_again_by_another_stop() -> None:
    """Another stop of an already reported flow neither re-arms it nor reports it twice."""
    loss = MediaLoss(report_after=1.0)
    loss.stop(AUDIO, now=0.0)
    assert loss.due(1.0) == [AUDIO]
    loss.stop(AUDIO, now=5.0)
    assert loss.next_deadline() is None and loss.due(50.0) == []


def test_a_blip_is_forgotten_silently_and_a_reported_loss_is_restored() -> None:
    """A flow back before its report is forgotten silently; back after it, it is restored."""
    loss = MediaLoss(report_after=1.0)
    loss.stop(AUDIO, now=0.0)
    assert loss.resume(AUDIO) is False
    assert loss.stopped == {} and loss.due(10.0) == []
    loss.stop(VIDEO, now=0.0)
    loss.due(1.0)
    assert loss.resume(VIDEO) is True and loss.stopped == {}
    assert loss.resume(VIDEO) is False
    assert loss.resume(AUDIO) is False


def test_due_returns_every_flow_past_its_delay_and_leaves_the_rest() -> None:
    """due() returns every stop past its delay together and leaves later ones armed."""
    loss = MediaLoss(report_after=1.0)
    loss.stop(AUDIO, now=0.0)
    loss.stop(VIDEO, now=0.5)
    later: FlowKey = ("pat", "doc", "audio")
    loss.stop(later, now=3.0)
    assert loss.due(1.5) == [AUDIO, VIDEO]
    assert loss.stopped == {AUDIO: None, VIDEO: None, later: 3.0}
    assert loss.next_deadline() == 4.0


def test_the_next_deadline_is_the_earliest_unreported_stop_plus_the_delay() -> None:
    """The next deadline is the earliest unreported stop plus the delay, or None."""
    loss = MediaLoss(report_after=3.0)
    assert loss.next_deadline() is None
    loss.stop(VIDEO, now=7.0)
    loss.stop(AUDIO, now=5.0)
    assert loss.next_deadline() == 8.0
    assert loss.due(8.0) == [AUDIO]
    assert loss.next_deadline() == 10.0


def test_forgetting_a_participant_drops_flows_they_send_or_receive() -> None:
    """Forgetting someone drops flows they send or receive, never others' nor by kind name."""
    loss = MediaLoss(report_after=1.0)
    mine_up: FlowKey = ("doc", "publish", "audio")
    to_me: FlowKey = ("doc", "pat", "video")
    from_me: FlowKey = ("pat", "doc", "video")
    other: FlowKey = ("pat", "nurse", "audio")
    for key in (mine_up, to_me, from_me, other):
        loss.stop(key, now=0.0)
    loss.forget("doc")
    assert loss.stopped == {other: 0.0}
    loss.forget("audio")  # a kind, not a participant
    assert loss.stopped == {other: 0.0}
