"""Sinks' queues are sized by time, per kind: a sink that cannot keep up loses the oldest
audio or restarts video at a keyframe, counts it, and never takes audio for video's sake."""

from __future__ import annotations

from mediaserver.forwarding import EncodedFrame
from mediaserver.tracks import VIEWER_DELAY, Fanout


def _frame(kind: str, i: int, at: float, keyframe: bool = False) -> EncodedFrame:
    clock = 48000 if kind == "audio" else 90000
    return EncodedFrame(kind=kind, codec="audio/opus" if kind == "audio" else "video/vp8",
                        clock_rate=clock, data=b"x", timestamp=i * clock // 50,
                        keyframe=keyframe or kind == "audio", arrival=at)


async def test_queues_hold_seconds_of_media_not_frames_and_count_what_they_drop() -> None:
    """Two seconds of 50 fps audio and 30 fps video into a viewer that reads nothing:
    its audio tap keeps 0.3 s (15 frames), not 4, its video tap restarts at the newest
    keyframe and asks the source for another; every dropped frame is counted."""
    requests: list[str] = []
    audio, video = Fanout("audio", lambda: None), Fanout("video", lambda: None,
                                                        lambda: requests.append("pli"))
    a_tap, v_tap = audio.tap(VIEWER_DELAY["audio"]), video.tap(VIEWER_DELAY["video"])
    assert requests == ["pli"]  # a new video sink starts by asking for a keyframe
    for i in range(100):
        audio.push(_frame("audio", i, i * 0.02))
    for i in range(60):
        video.push(_frame("video", i, i / 30, keyframe=i in (0, 45)))
    kept_audio = a_tap.drain()
    assert len(kept_audio) == 15 and kept_audio[-1].arrival == 99 * 0.02
    assert a_tap.counters.dropped == 100 - 15
    kept_video = v_tap.drain()
    assert kept_video[0].keyframe and kept_video[0].arrival == 45 / 30
    assert len(kept_video) == 15 and v_tap.counters.dropped == 45


async def test_a_video_sink_with_no_keyframe_to_restart_from_waits_for_one_and_asks() -> None:
    """Overflowing without a keyframe in its queue, a video sink drops everything, asks
    the source for a keyframe and counts the deltas it then cannot use as dropped."""
    requests: list[str] = []
    video = Fanout("video", lambda: None, lambda: requests.append("pli"))
    tap = video.tap(VIEWER_DELAY["video"])
    video.push(_frame("video", 0, 0.0, keyframe=True))
    for i in range(1, 40):
        video.push(_frame("video", i, i / 30))
    assert len(requests) == 2  # at the start, and at the overflow
    assert tap.drain() == [] and tap.counters.dropped == 40
    before = tap.counters.dropped
    video.push(_frame("video", 40, 40 / 30))
    assert tap.counters.dropped == before + 1
    video.push(_frame("video", 41, 41 / 30, keyframe=True))
    assert [f.keyframe for f in tap.drain()] == [True]


async def test_a_video_sink_still_waiting_for_a_keyframe_asks_again_each_second() -> None:
    """The first keyframe request (or the keyframe) was lost: the new viewer asks again
    a second after the first frame it could not use, and each second after, until a
    keyframe comes; then it stops asking. Without this a viewer stays black for minutes."""
    requests: list[float] = []
    video = Fanout("video", lambda: None, lambda: requests.append(-1.0))
    tap = video.tap(VIEWER_DELAY["video"])
    assert len(requests) == 1
    for i in range(1, 76):  # 2.5 s of deltas at 30 fps, from t=1/30
        video.push(_frame("video", i, i / 30))
    assert len(requests) == 3  # at the start, then 1 s and 2 s after the first delta
    assert tap.drain() == [] and tap.counters.skipped == 75
    video.push(_frame("video", 76, 76 / 30, keyframe=True))
    for i in range(77, 92):  # 0.5 s more, within what the sink holds
        video.push(_frame("video", i, i / 30))
    assert len(requests) == 3  # no more once a keyframe came
    assert len(tap.drain()) == 16 and tap.counters.dropped == 0
