"""Recording verification reads ffprobe's packet list: a file whose duration is right but
whose media stops inside it is flagged with where, and for how long."""

from __future__ import annotations

import asyncio
import fractions
import re
from pathlib import Path

import av

from recordings.continuity import check


async def _clip(path: Path, seconds: float) -> None:
    """A real VP8/Opus WEBM from ffmpeg's test sources."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=15",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        "-c:v", "libvpx", "-deadline", "realtime", "-g", "15", "-c:a", "libopus", str(path))
    assert await proc.wait() == 0


def _remux_with_hole(source: Path, target: Path, kind: str, at: float, length: float) -> None:
    """Copies `source` packet by packet, `kind`'s missing from `at` for `length` seconds
    (the rest of the file keeps its times, as a recorder that lost media writes it)."""
    with av.open(str(source)) as inp, av.open(str(target), "w", format="webm") as out:
        streams = {}
        for stream in inp.streams:
            streams[stream.index] = out.add_stream_from_template(stream)
        for packet in inp.demux():
            if packet.dts is None:
                continue
            assert packet.time_base is not None
            t = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
            if packet.stream.type == kind and at <= t < at + length:
                continue
            packet.stream = streams[packet.stream.index]
            packet.time_base = packet.time_base or fractions.Fraction(1, 1000)
            out.mux(packet)


async def test_a_continuous_file_passes_and_holes_are_named_with_their_place(
        tmp_path: Path) -> None:
    """ffmpeg's clip passes; the same clip with 1.5 s of audio, or of video, cut out of
    its middle is flagged with the kind, the length and the time it happened."""
    clip = tmp_path / "clip.webm"
    await _clip(clip, 6)
    assert await check(clip) is None
    for kind in ("audio", "video"):
        holed = tmp_path / f"no-{kind}.webm"
        await asyncio.to_thread(_remux_with_hole, clip, holed, kind, 2.0, 1.5)
        problem = await check(holed)
        assert problem is not None, kind
        match = re.search(rf"{kind} (\d+\.\d+) s at 00:(\d+\.\d+)", problem)
        assert match is not None, problem
        length, at = float(match[1]), float(match[2])
        assert 1.4 < length < 1.65 and 1.9 < at < 2.1, problem
        other = "video" if kind == "audio" else "audio"
        assert f"{other} " not in problem.split(":", 1)[1], problem


async def test_an_unreadable_file_is_a_problem_too(tmp_path: Path) -> None:
    """What ffprobe cannot read cannot be called continuous."""
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"not a webm file at all")
    problem = await check(junk)
    assert problem is not None and problem.startswith("packets unreadable"), problem
