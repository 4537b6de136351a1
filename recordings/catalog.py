"""What we know about a call's recordings: `metadata.json` in its folder (written
atomically) and an index in Redis for listing.

Folder layout: `<root>/<YYYY>/<MM>/<DD>/<call id>/` holding one WEBM per published stream
(`<participant>.webm`, `<participant>.partN.webm` after a rejoin), `consultation.webm` (the
composition) and `metadata.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

__all__ = ["INDEX", "Catalog", "probe", "sha256_of", "write_json_atomic"]

INDEX = "telemed:recordings:index"
METADATA = "metadata.json"
COMPOSED = "consultation.webm"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".meta-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def probe(path: Path, ffprobe: str = "ffprobe") -> dict[str, Any]:
    """ffprobe's view of a file: {"streams": [...], "duration": s} or {"error": ...}."""
    proc = await asyncio.create_subprocess_exec(
        ffprobe, "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
        str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        return {"error": err.decode(errors="replace").strip()[:300] or "ffprobe failed"}
    info = json.loads(out)
    streams = sorted(s.get("codec_type", "?") for s in info.get("streams", []))
    duration = info.get("format", {}).get("duration")
    return {"streams": streams, "duration": float(duration) if duration else None}


class Catalog:
    def __init__(self, root: Path, redis: aioredis.Redis) -> None:
        self.root = root
        self.redis = redis

    def folders(self) -> list[Path]:
        """Every call folder under the root (dated layout)."""
        return sorted(p for p in self.root.glob("*/*/*/*") if p.is_dir())

    @staticmethod
    def read(folder: Path) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((folder / METADATA).read_text())
            return data
        except (FileNotFoundError, ValueError):
            return None

    async def write(self, folder: Path, meta: dict[str, Any]) -> None:
        await asyncio.to_thread(write_json_atomic, folder / METADATA, meta)
        await self.index(folder, meta)

    async def index(self, folder: Path, meta: dict[str, Any]) -> None:
        """Lists the call in Redis; the folder's metadata.json stays the source of truth."""
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(f"telemed:recordings:{meta['call']}", json.dumps({
                **meta, "folder": str(folder.relative_to(self.root))}))
            tx.zadd(INDEX, {meta["call"]: meta.get("createdAt") or 0})
            await tx.execute()

    async def get(self, call_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"telemed:recordings:{call_id}")
        return json.loads(raw) if raw is not None else None

    async def find(self, *, since: float = 0.0, limit: int = 50) -> list[dict[str, Any]]:
        ids = await self.redis.zrevrangebyscore(INDEX, "+inf", since, start=0, num=limit)
        out = []
        for raw_id in ids:
            call_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            meta = await self.get(call_id)
            if meta is not None:
                out.append(meta)
        return out

    def path_of(self, meta: dict[str, Any], name: str) -> Path | None:
        """A file of a call, only if the metadata lists it: names never reach the disk."""
        names = {f["name"] for f in meta.get("files", [])}
        if meta.get("composed"):
            names.add(meta["composed"]["name"])
        if name not in names or meta.get("deleted"):
            return None
        return self.root / str(meta["folder"]) / name
