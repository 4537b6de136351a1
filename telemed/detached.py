"""Children that outlive us: started detached with their own log file and a pid file, so
that a killed or restarted service finds them running and reattaches (the calls their
media server carries can then be taken over). `PidFile` tells our child from a process
that got its pid later; `Detached` is the part of asyncio's Process the supervisor uses;
`wait_exit` waits for any process, child of ours or not."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Detached", "PidFile", "start_detached", "wait_exit"]


async def wait_exit(pid: int) -> None:
    """Until process `pid` ends (a pidfd becomes readable then), child of ours or not."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class Detached:
    """A child that outlives us, with the part of asyncio's Process the supervisor uses."""

    stdout = None

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        while (code := self._popen.poll()) is None:
            await wait_exit(self.pid)
        return code

    def let_go(self) -> None:
        """Left running for the next start: no longer ours to wait for (nor to be warned
        about as "still running" when this object goes)."""
        self._popen.returncode = 0


class PidFile:
    """`<pid> <start time>` of a child that may outlive us: the start time (from
    /proc/<pid>/stat) tells our child from a process that got its pid later."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def _started(pid: int) -> str | None:
        """Its start time, or None when it is gone (a zombie is gone too)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields 3 (state) and 22 (starttime); the name in brackets may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]

    def write(self, pid: int) -> None:
        self.path.write_text(f"{pid} {self._started(pid)}\n")

    def running(self) -> int | None:
        """The recorded pid, if that very process still runs."""
        try:
            pid_text, started = self.path.read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if self._started(pid) == started else None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _popen(name: str, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
           folder: Path) -> subprocess.Popen[bytes]:
    # Its own log file, not a pipe to us: a pipe would break when we die first.
    # Not asyncio's subprocess either: its transport kills the child on our exit.
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.log").open("ab") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                start_new_session=True)


async def start_detached(name: str, argv: Sequence[str], env: Mapping[str, str],
                         cwd: str | None, folder: Path) -> Detached:
    """Starts `argv` in its own session, writing to `<folder>/<name>.log`, its pid in
    `<folder>/<name>.pid`."""
    proc = Detached(await asyncio.to_thread(_popen, name, argv, env, cwd, folder))
    PidFile(folder / f"{name}.pid").write(proc.pid)
    return proc
