"""Retention: recordings older than the configured period are deleted; their metadata
stays and says who deleted what, when."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from recordings.catalog import Catalog

__all__ = ["purge"]

log = logging.getLogger(__name__)


async def purge(catalog: Catalog, *, older_than: float, now: float, by: str = "retention",
                dry_run: bool = False) -> list[dict[str, Any]]:
    """Deletes the files of calls created before `older_than`; returns what it (would) do."""
    done = []
    for meta in await catalog.find(since=0, limit=100_000):
        if meta.get("deleted") or (meta.get("createdAt") or now) >= older_than:
            continue
        folder = catalog.root / meta["folder"]
        if not await asyncio.to_thread(folder.is_dir):
            log.warning("! retention: folder %s is gone; index entry kept", folder,
                        extra={"call_id": meta["call"]})
            continue
        names = [f["name"] for f in meta.get("files", [])]
        if meta.get("composed"):
            names.append(meta["composed"]["name"])
        done.append({"call": meta["call"], "files": names})
        if dry_run:
            continue
        for name in names:
            await asyncio.to_thread((folder / name).unlink, missing_ok=True)
        meta.update(state="deleted", deleted={"at": now, "by": by, "files": names})
        meta.pop("folder", None)
        await catalog.write(folder, meta)
        log.info("= recordings deleted by %s: %s", by, ", ".join(names),
                 extra={"call_id": meta["call"]})
    return done
