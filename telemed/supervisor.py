"""Supervised child processes: the embedded redis-server, media server and coturn.

Each child runs in its own process group, dies with us (PR_SET_PDEATHSIG) even if we are
SIGKILLed, has its output forwarded to our log line by line, and is restarted with backoff
when it exits unexpectedly. `stop()` terminates the whole group, then kills what is left.
A child that outlives us (`ChildSpec.outlives`) is started and found again through
`telemed.detached`; its log lines become ours through `telemed.child_logs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemed.child_logs import foreign_level, parse_log_line
from telemed.detached import Detached, PidFile, start_detached, wait_exit

__all__ = ["Child", "ChildSpec", "ChildState", "Supervisor"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, kw_only=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    #: Answers True once the child serves; polled after each start.
    probe: Probe | None = None
    #: Delays before successive restarts (seconds); the last one repeats.
    restart_delays: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 5.0)
    #: A child that ran this long without exiting has its backoff reset.
    stable_after: float = 30.0
    stop_timeout: float = 5.0
    ready_timeout: float = 20.0
    #: A folder for its pid file and log: the child is not bound to our life (a killed or
    #: restarted service finds it running and reattaches, so the calls its media server
    #: carries can be taken over). None: it dies with us.
    outlives: Path | None = None


class ChildState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"


@dataclass
class Child:
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    starts: int = 0
    last_exit: int | None = None
    _proc: asyncio.subprocess.Process | Detached | None = None
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _adopted: int | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def ready(self) -> bool:
        return self.state is ChildState.RUNNING

    def describe(self) -> dict[str, Any]:
        return {"state": self.state.value, "pid": self.pid, "starts": self.starts,
                "last_exit": self.last_exit}

    async def _set(self, state: ChildState) -> None:
        if state is not self.state:
            log.info("= %s -> %s", self.state.value, state.value,
                     extra={"child": self.spec.name, "pid": self.pid})
        self.state = state
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Child], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    @property
    def pidfile(self) -> PidFile | None:
        folder = self.spec.outlives
        return PidFile(folder / f"{self.spec.name}.pid") if folder is not None else None

    async def _spawn(self) -> asyncio.subprocess.Process | Detached:
        env = dict(os.environ)
        if self.spec.env:
            env.update(self.spec.env)
        folder = self.spec.outlives
        proc: asyncio.subprocess.Process | Detached
        if folder is None:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env=env, cwd=self.spec.cwd, start_new_session=True,
                preexec_fn=_die_with_parent)
        else:
            proc = await start_detached(self.spec.name, self.spec.argv, env, self.spec.cwd,
                                        folder)
        self.starts += 1
        self.pid = proc.pid
        return proc

    async def _reattach(self) -> bool:
        """A child that outlives us and still runs from before: watched, not started."""
        pidfile = self.pidfile
        pid = pidfile.running() if pidfile is not None else None
        if pid is None:
            return False
        self.pid = pid
        if self.spec.probe is not None:
            with contextlib.suppress(Exception):
                if not await self.spec.probe():
                    return False
        log.info("= found running from before (pid %d): reattached", pid,
                 extra={"child": self.spec.name})
        await self._set(ChildState.RUNNING)
        self._adopted = pid
        follow = asyncio.create_task(self._follow(self._log_size()))
        try:
            await wait_exit(pid)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            self._adopted = None
        return True

    def _relay(self, line: bytes) -> None:
        """One line the child wrote, into our log under its name."""
        logger = logging.getLogger(f"telemed.child.{self.spec.name}")
        text = line.decode(errors="replace").rstrip()
        parsed = parse_log_line(text)
        if parsed is None:
            # Not our format (coturn's banner, redis): its own words say how bad it is;
            # the rest is debug, so a newcomer's console shows what matters.
            logger.log(foreign_level(text), "%s", text, extra={"child": self.spec.name})
        else:
            level, message, fields = parsed
            fields.pop("child", None)  # ours names the process that wrote the line
            logger.log(level, "%s", message, extra={"child": self.spec.name, **fields})

    async def _pump(self, proc: asyncio.subprocess.Process | Detached) -> None:
        if proc.stdout is None:
            return  # it writes its own log file (`outlives`): `_follow` reads it
        while line := await proc.stdout.readline():
            self._relay(line)

    @property
    def logfile(self) -> Path | None:
        folder = self.spec.outlives
        return folder / f"{self.spec.name}.log" if folder is not None else None

    async def _follow(self, offset: int) -> None:
        """Relays what an outliving child appends to its log file, from `offset`, until
        cancelled (then what is left). A file gives no event for new lines: polled."""
        path = self.logfile
        assert path is not None
        with path.open("rb") as fh:
            fh.seek(offset)
            try:
                while True:
                    for line in fh.readlines():
                        self._relay(line)
                    await asyncio.sleep(0.2)
            finally:
                for line in fh.readlines():
                    self._relay(line)

    def _log_size(self) -> int:
        path = self.logfile
        return path.stat().st_size if path is not None and path.exists() else 0

    async def _await_ready(self, proc: asyncio.subprocess.Process | Detached) -> bool:
        if self.spec.probe is None:
            return True
        deadline = time.monotonic() + self.spec.ready_timeout
        delay = 0.02
        while proc.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await self.spec.probe():
                    return True
            await asyncio.sleep(delay)  # polling a port: there is no event to await
            delay = min(delay * 2, 0.5)
        return False

    async def run(self) -> None:
        attempt = 0
        if await self._reattach() and not self._stopping:
            log.warning("! exited", extra={"child": self.spec.name, "pid": self.pid})
        while not self._stopping:
            await self._set(ChildState.STARTING)
            offset = self._log_size()
            try:
                proc = await self._spawn()
            except OSError as exc:
                log.error("! cannot start %s: %s", self.spec.argv[0], exc,
                          extra={"child": self.spec.name})
                proc = None
            if proc is not None:
                self._proc = proc
                pump = asyncio.create_task(self._pump(proc)) if proc.stdout is not None \
                    else asyncio.create_task(self._follow(offset))
                started = time.monotonic()
                try:
                    if await self._await_ready(proc) and not self._stopping:
                        await self._set(ChildState.RUNNING)
                    elif proc.returncode is None and not self._stopping:
                        log.error("! not ready after %.1fs, restarting",
                                  self.spec.ready_timeout, extra={"child": self.spec.name})
                        await self._terminate(proc)
                    self.last_exit = await proc.wait()
                    # Whatever it left in its group goes with it, before a new one starts.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                finally:
                    if proc.stdout is None:  # a log file's follower ends when told
                        pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                if self.stop_requested():
                    break
                log.warning("! exited with %s", self.last_exit,
                            extra={"child": self.spec.name, "pid": self.pid})
                if time.monotonic() - started >= self.spec.stable_after:
                    attempt = 0
            delays = self.spec.restart_delays
            delay = delays[min(attempt, len(delays) - 1)]
            attempt += 1
            await self._set(ChildState.BACKOFF)
            await asyncio.sleep(delay)
        self.pid = None
        await self._set(ChildState.STOPPED)

    async def _terminate(self, proc: asyncio.subprocess.Process | Detached) -> None:
        # The whole group: a child's own children must not outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.spec.stop_timeout)
        except TimeoutError:
            log.warning("! did not stop in %.1fs, killing", self.spec.stop_timeout,
                        extra={"child": self.spec.name})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    def stop_requested(self) -> bool:
        return self._stopping

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=f"child:{self.spec.name}")

    async def stop(self, *, keep: bool = False) -> None:
        """`keep`: a child that outlives us is left running (the service restarts and
        reattaches); others stop."""
        self._stopping = True
        if self._task is None:
            return
        if keep and self.spec.outlives is not None:
            if isinstance(self._proc, Detached):
                self._proc.let_go()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            return
        await self._set(ChildState.STOPPING)
        if self._adopted is not None:
            await self._terminate_adopted(self._adopted)
        elif self._proc is not None and self._proc.returncode is None:
            await self._terminate(self._proc)
        elif self._proc is not None:
            # Grandchildren may survive a leader that already exited.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._task.cancel()  # wakes a backoff sleep
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self.pid = None
        self.state = ChildState.STOPPED
        if self.pidfile is not None:
            self.pidfile.remove()

    async def _terminate_adopted(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(wait_exit(pid), self.spec.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


class Supervisor:
    """Owns the children; `start()` waits until each is ready, `stop()` until each is gone."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}

    def add(self, spec: ChildSpec) -> Child:
        if spec.name in self.children:
            raise ValueError(f"duplicate child {spec.name!r}")
        child = Child(spec)
        self.children[spec.name] = child
        return child

    async def start(self, *, wait_ready: bool = True) -> None:
        for child in self.children.values():
            child.start()
        if wait_ready:
            for child in self.children.values():
                try:
                    await child.wait_for(lambda c: c.ready, child.spec.ready_timeout)
                except TimeoutError:
                    raise RuntimeError(
                        f"{child.spec.name} did not become ready in "
                        f"{child.spec.ready_timeout}s (see its log lines)"
                    ) from None

    async def stop(self, *, keep: bool = False) -> None:
        """`keep`: children that outlive us go on running for the next start."""
        await asyncio.gather(*(c.stop(keep=keep) for c in reversed(self.children.values())))

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: c.describe() for name, c in self.children.items()}

    @property
    def all_ready(self) -> bool:
        return all(c.ready for c in self.children.values())
