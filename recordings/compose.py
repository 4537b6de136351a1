"""One consultation file per call: participants side by side (a grid for more), audio
mixed, each stream placed at the moment its recording started. The originals stay."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Stream", "compose", "ffmpeg_args"]

TILE_W, TILE_H = 640, 360


@dataclass(frozen=True)
class Stream:
    path: Path
    offset: float  # seconds after the earliest stream started
    audio: bool
    video: bool


def ffmpeg_args(streams: list[Stream], out: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    args = [ffmpeg, "-y", "-v", "error"]
    for s in streams:
        args += ["-i", str(s.path)]
    filters: list[str] = []
    videos = [i for i, s in enumerate(streams) if s.video]
    audios = [i for i, s in enumerate(streams) if s.audio]
    for i in videos:
        pad = int(streams[i].offset * 1000)
        filters.append(
            f"[{i}:v]scale={TILE_W}:{TILE_H}:force_original_aspect_ratio=decrease,"
            f"pad={TILE_W}:{TILE_H}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=15,"
            f"tpad=start_duration={pad}ms:color=black[v{i}]")
    for i in audios:
        delay = int(streams[i].offset * 1000)
        filters.append(f"[{i}:a]aresample=48000,adelay={delay}:all=1[a{i}]")
    maps: list[str] = []
    if len(videos) == 1:
        filters.append(f"[v{videos[0]}]null[vout]")
    elif videos:
        cols = math.ceil(math.sqrt(len(videos)))
        layout = "|".join(f"{(k % cols) * TILE_W}_{(k // cols) * TILE_H}"
                          for k in range(len(videos)))
        inputs = "".join(f"[v{i}]" for i in videos)
        filters.append(f"{inputs}xstack=inputs={len(videos)}:layout={layout}:fill=black[vout]")
    if videos:
        maps += ["-map", "[vout]", "-c:v", "libvpx", "-deadline", "realtime",
                 "-cpu-used", "8", "-b:v", "1M"]
    if audios:
        inputs = "".join(f"[a{i}]" for i in audios)
        filters.append(f"{inputs}amix=inputs={len(audios)}:duration=longest:normalize=0[aout]")
        maps += ["-map", "[aout]", "-c:a", "libopus", "-b:a", "64k"]
    return [*args, "-filter_complex", ";".join(filters), *maps, str(out)]


async def compose(streams: list[Stream], out: Path, ffmpeg: str = "ffmpeg", *,
                  fence: Callable[[], Awaitable[None]] | None = None) -> str | None:
    """Writes `out` (through a temporary name); returns an error text or None. `fence` is
    awaited before the file takes its place (it raises when this node lost the call)."""
    if not streams:
        return "no usable stream"
    # Its own temporary name: a node that lost the call while frozen may still have an
    # ffmpeg writing next to the one of the node that took over.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.part.webm")
    proc = await asyncio.create_subprocess_exec(
        *ffmpeg_args(streams, tmp, ffmpeg), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        # Given up (the call was taken over, or shutdown): ffmpeg would otherwise run on.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        return err.decode(errors="replace").strip()[-300:] or "ffmpeg failed"
    if fence is not None:
        try:
            await fence()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(out)
    return None
