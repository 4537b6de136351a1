"""The call-events journal: a private append-only file whose lines are written to the OS
at once and fsynced by a background thread, one fsync for every line written meanwhile
(group commit), so the event loop never waits for the disk; `synced()` waits for what
was written so far."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TextIO

__all__ = ["Journal"]

log = logging.getLogger(__name__)


def _private_append(path: Path) -> TextIO:
    """The journal holds patients' names and the MIS's metadata: its owner's alone, even
    when an earlier version left it readable to others."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


class Journal:
    def __init__(self, path: Path) -> None:
        self._file = _private_append(path)
        self._wanted = 0  # durable lines written
        self._done = 0  # durable lines known fsynced
        self._syncer: asyncio.Task[None] | None = None

    def append(self, line: str, *, durable: bool) -> None:
        """Written and flushed to the OS at once (a crash of the process loses nothing);
        `durable` lines are fsynced too, soon after, by the background thread (a crash of
        the machine loses nothing once `synced()` returned)."""
        self._file.write(line + "\n")
        self._file.flush()
        if not durable:
            return
        self._wanted += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            os.fsync(self._file.fileno())  # no loop to wait on (a script): at once
            self._done = self._wanted
            return
        if self._syncer is None or self._syncer.done():
            self._syncer = loop.create_task(self._sync(), name="journal-fsync")

    async def _sync(self) -> None:
        fd = self._file.fileno()
        while self._done < self._wanted:
            target = self._wanted
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                # The lines are still in the OS's cache and on their way to Redis.
                log.error("! cannot fsync the call-events journal: %s", exc)
            self._done = target

    async def synced(self) -> None:
        """Returns once every durable line written so far is fsynced."""
        if self._syncer is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._syncer)

    def truncate(self) -> None:
        self._file.truncate(0)

    async def close(self) -> None:
        await self.synced()
        self._file.close()
