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
    """Two publishers, both recorded, nothing pending, each subscribed to and receiving the
    other: the call is live (pairs of a person with themself are never asked for)."""
    assert verdict() is True


@pytest.mark.parametrize("publishers", [(), ("pat",), ("pat", "pat")])
def test_fewer_than_two_people_publishing_is_never_live(publishers: tuple[str, ...]) -> None:
    """Nobody or one person publishing (twice counts once) is not a call, whatever else
    holds: with no pairs to expect, only the head count refuses it."""
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
    """A publisher whose endpoint is not subscribed to another's media refuses live, even
    when its browser (wrongly early) reports the media."""
    subscribed = [p for p in PAIRS if p != missing]
    assert verdict(subscribed=subscribed) is False


@pytest.mark.parametrize("missing", PAIRS)
def test_every_viewer_must_report_media_from_every_other(missing: tuple[str, str]) -> None:
    """A browser that has not reported media arriving from another publisher refuses live."""
    reported = [p for p in PAIRS if p != missing]
    assert verdict(reported=reported) is False


def test_three_publishers_need_all_six_pairs() -> None:
    """With three publishers every ordered pair of distinct people is needed; the five of six
    that a two-by-two check would accept are not enough."""
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
    """A stop is not due before `report_after` seconds, is due at exactly that, and is
    returned by one `due` only."""
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
    """Once reported, a flow stays reported (None) until it resumes: a further stop neither
    re-arms its deadline nor reports it twice."""
    loss = MediaLoss(report_after=1.0)
    loss.stop(AUDIO, now=0.0)
    assert loss.due(1.0) == [AUDIO]
    loss.stop(AUDIO, now=5.0)
    assert loss.next_deadline() is None and loss.due(50.0) == []


def test_a_blip_is_forgotten_silently_and_a_reported_loss_is_restored() -> None:
    """A flow back before its report says nothing (False) and is forgotten; one back after
    its report says restored (True); an unknown flow says nothing."""
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
    """Of several stops, those that lasted the delay are returned together; a later one
    keeps its time and becomes the next deadline."""
    loss = MediaLoss(report_after=1.0)
    loss.stop(AUDIO, now=0.0)
    loss.stop(VIDEO, now=0.5)
    later: FlowKey = ("pat", "doc", "audio")
    loss.stop(later, now=3.0)
    assert loss.due(1.5) == [AUDIO, VIDEO]
    assert loss.stopped == {AUDIO: None, VIDEO: None, later: 3.0}
    assert loss.next_deadline() == 4.0


def test_the_next_deadline_is_the_earliest_unreported_stop_plus_the_delay() -> None:
    """Nothing stopped has no deadline; otherwise the earliest stop not yet reported sets
    it, and reported ones are left out."""
    loss = MediaLoss(report_after=3.0)
    assert loss.next_deadline() is None
    loss.stop(VIDEO, now=7.0)
    loss.stop(AUDIO, now=5.0)
    assert loss.next_deadline() == 8.0
    assert loss.due(8.0) == [AUDIO]
    assert loss.next_deadline() == 10.0


def test_forgetting_a_participant_drops_flows_they_send_or_receive() -> None:
    """A participant who left takes their upload, what they received and what others
    received from them; other people's flows and the kind name are not matched."""
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
