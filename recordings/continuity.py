"""Whether a recording is continuous, from ffprobe's packet list: a duration says nothing
of the media missing inside it.

Audio must run on packet after packet (each starts where the last ended, within
AUDIO_GAP); video must keep its pace (no interval above VIDEO_GAP or VIDEO_FACTOR times
its usual one). Each hole is reported with where it is in the file and how long it lasts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Hole", "check", "describe", "find_holes"]

#: Audio missing for longer than this is a hole (5 Opus frames; one lost packet is not).
AUDIO_GAP = 0.1
#: Video standing still for longer than this, and longer than VIDEO_FACTOR times its
#: median frame interval, is a hole (a browser lowers its frame rate; it does not stop).
VIDEO_GAP = 0.5
VIDEO_FACTOR = 4.0
#: At most this many holes are named one by one in a problem.
LISTED = 5


@dataclass(frozen=True)
class Hole:
    kind: str
    at: float  # seconds into the file where the media stops
    length: float  # seconds until it comes back


def find_holes(packets: list[tuple[str, float, float]]) -> list[Hole]:
    """Holes in (kind, pts seconds, duration seconds) packets, in file order."""
    holes: list[Hole] = []
    for kind in ("audio", "video"):
        own = sorted((pts, dur) for k, pts, dur in packets if k == kind)
        if len(own) < 2:
            continue
        intervals = [b[0] - a[0] for a, b in itertools.pairwise(own)]
        if kind == "audio":
            for (pts, dur), (nxt, _) in itertools.pairwise(own):
                end = pts + (dur or 0.02)
                if nxt - end > AUDIO_GAP:
                    holes.append(Hole(kind, round(end, 3), round(nxt - end, 3)))
        else:
            usual = statistics.median(intervals)
            limit = max(VIDEO_GAP, VIDEO_FACTOR * usual)
            for (pts, _), interval in zip(own, intervals, strict=False):
                if interval > limit:
                    # The last picture stands for one usual interval; then it is missing.
                    holes.append(Hole(kind, round(pts + usual, 3), round(interval - usual, 3)))
    return sorted(holes, key=lambda h: (h.at, h.kind))


def describe(holes: list[Hole]) -> str | None:
    """One `problems` line for a file's holes, or None."""
    if not holes:
        return None
    total = {k: sum(h.length for h in holes if h.kind == k) for k in ("audio", "video")}
    named = ", ".join(f"{h.kind} {h.length:.2f} s at {_clock(h.at)}" for h in holes[:LISTED])
    more = f" and {len(holes) - LISTED} more" if len(holes) > LISTED else ""
    lost = ", ".join(f"{k} {v:.2f} s" for k, v in total.items() if v)
    return f"media missing ({lost} in {len(holes)} holes): {named}{more}"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:05.2f}"


async def packets(path: Path, ffprobe: str = "ffprobe") -> list[tuple[str, float, float]]:
    """(kind, pts, duration) of every packet; raises RuntimeError if ffprobe cannot read."""
    proc = await asyncio.create_subprocess_exec(
        ffprobe, "-v", "error", "-of", "json", "-show_entries",
        "stream=index,codec_type:packet=stream_index,pts_time,duration_time", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err.decode(errors="replace").strip()[:300] or "ffprobe failed")
    # An hour of media is ~300,000 packets: parsed off the event loop.
    return await asyncio.to_thread(_parse_packets, out)


def _parse_packets(out: bytes) -> list[tuple[str, float, float]]:
    info: dict[str, Any] = json.loads(out)
    kinds = {s["index"]: s.get("codec_type", "?") for s in info.get("streams", [])}
    result = []
    for p in info.get("packets", []):
        if p.get("pts_time") is None:
            continue
        result.append((kinds.get(p["stream_index"], "?"), float(p["pts_time"]),
                       float(p.get("duration_time") or 0.0)))
    return result


async def check(path: Path, ffprobe: str = "ffprobe") -> str | None:
    """The problem with `path`'s continuity, if any, in words for `problems`."""
    try:
        found = await packets(path, ffprobe)
        return await asyncio.to_thread(lambda: describe(find_holes(found)))
    except RuntimeError as exc:
        return f"packets unreadable: {exc}"
