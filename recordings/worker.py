"""After a call: verify every file, write metadata, compose, tell the MIS. In the
background, a bounded queue and a fixed number of workers; ffmpeg and hashing never run on
the event loop. At start-up, folders a dead process left behind are finalized too."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from recordings import continuity
from recordings.catalog import COMPOSED, Catalog, probe, sha256_of
from recordings.claims import CallClaim, ClaimLost
from recordings.compose import Stream, compose

__all__ = ["RecordingWorker"]

log = logging.getLogger(__name__)

Job = tuple[Path, dict[str, Any], bool, int]  # folder, snapshot, recovered, attempt
#: (event, data, event id): publishing an id already published does nothing.
Publish = Callable[[str, dict[str, Any], str], Awaitable[Any]]
#: Finished calls whose `wait` still returns at once (see `_forget_old`).
DONE_KEPT = 100
#: A recording may outlast the timeline's view of it by this much and still be plausible.
SLACK = 5.0
#: A call's finalisation claim outlives a node that died finalising it by at most this (s).
CLAIM_TTL = 30.0
#: Metadata states after which a call's recordings are done with.
FINAL = frozenset({"ready", "verified", "flagged", "deleted"})


def _starts(snap: dict[str, Any]) -> dict[str, list[float]]:
    """When each participant's recordings began (one entry per segment), from the timeline."""
    starts: dict[str, list[float]] = {}
    for e in snap.get("timeline", []):
        if e.get("event") == "recording":
            starts.setdefault(e["participant"], []).append(e["at"])
    return starts


def _stops(snap: dict[str, Any]) -> dict[str, list[float]]:
    """When each participant's media stopped being recorded: it left or its link dropped."""
    stops: dict[str, list[float]] = {}
    for e in snap.get("timeline", []):
        if e.get("event") in ("left", "disconnected"):
            stops.setdefault(e["participant"], []).append(e["at"])
    return stops


def _recorder_errors(snap: dict[str, Any]) -> dict[str, list[tuple[float, str]]]:
    """The recorder's own failures (NO_SPACE, write errors) per participant, from the
    timeline: a file cut off by them may still probe as whole."""
    errors: dict[str, list[tuple[float, str]]] = {}
    for e in snap.get("timeline", []):
        what = e.get("error")
        if e.get("event") == "media-error" and isinstance(what, str) \
                and what.startswith("recorder:"):
            errors.setdefault(e["participant"], []).append((e["at"], what))
    return errors


def media_end(snap: dict[str, Any], owner: str, started: float, stopped: float) -> float:
    """When `owner`'s media last reached the server before `stopped`: a browser frozen
    with its socket open stays in the call, but its recording ends when its media did.
    The time every kind it sent stopped flowing in, if none came back; else `stopped`."""
    last: dict[str, tuple[float, bool]] = {}
    for e in snap.get("timeline", []):
        if e.get("event") == "flow" and e.get("participant") == owner \
                and e.get("target") == "publish" and e.get("direction") == "in" \
                and started <= e["at"] <= stopped:
            last[e["kind"]] = (e["at"], bool(e["flowing"]))
    if not last or any(flowing for _, flowing in last.values()):
        return stopped
    return max(at for at, _ in last.values())


def event_id(call_id: str, event: str, detail: str) -> str:
    """The same id for the same news: a retried or recovered job publishes it once."""
    return hashlib.sha256(f"{call_id}\0{event}\0{detail}".encode()).hexdigest()[:32]


def implausible(duration: float, started: float, stopped: float) -> str | None:
    """Why a file's duration does not fit the time its stream was recorded, if it does not:
    longer than that, or more than half of it missing."""
    expected = stopped - started
    if duration > expected + SLACK:
        return f"longer than the call ({duration:.1f} s of {expected:.1f} s)"
    if duration + SLACK < expected / 2:
        return f"shorter than the call ({duration:.1f} s of {expected:.1f} s)"
    return None


def _owner(name: str) -> tuple[str, int]:
    stem = name[: -len(".webm")]
    base, dot, part = stem.rpartition(".part")
    if dot and part.isdigit():
        return base, int(part) - 1
    return stem, 0


class RecordingWorker:
    def __init__(self, catalog: Catalog, publish: Publish, *, workers: int = 1,
                 queue_size: int = 100, compose_files: bool = True,
                 retry_base: float = 1.0, retry_cap: float = 60.0,
                 claim_ttl: float = CLAIM_TTL) -> None:
        self.catalog = catalog
        self.publish = publish
        self.compose_files = compose_files
        self.queue: asyncio.Queue[Job] = asyncio.Queue(queue_size)
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.claim_ttl = claim_ttl
        #: This worker's name on the calls it claims (recordings.claims).
        self.token = uuid.uuid4().hex
        #: Calls being finalized here: a second job for one waits, as for another node.
        self._active: set[str] = set()
        #: Jobs waiting out a backoff after a full disk or an unreachable Redis.
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.done: dict[str, asyncio.Event] = {}
        self.busy = 0
        #: Set whenever a worker finishes a call (drain at shutdown waits on it).
        self.idle = asyncio.Event()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"recordings-{i}")
                       for i in range(self._workers)]

    async def close(self) -> None:
        """Lets queued work finish (bounded by the caller's timeout), then stops."""
        for handle in self._retries.values():
            handle.cancel()  # the next start-up's scan picks these folders up
        self._retries.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, folder: Path, snap: dict[str, Any], *, recovered: bool = False) -> bool:
        self.done.setdefault(snap["id"], asyncio.Event())
        try:
            self.queue.put_nowait((folder, snap, recovered, 0))
            return True
        except asyncio.QueueFull:
            log.error("! recordings queue full; the next start-up will finalize this call",
                      extra={"call_id": snap["id"]})
            return False

    async def wait(self, call_id: str) -> None:
        await self.done.setdefault(call_id, asyncio.Event()).wait()

    async def scan(self, snapshots: Callable[[str], Awaitable[dict[str, Any] | None]]) -> int:
        """Folders with no final metadata of calls that are over (they ended with a process
        that died) are queued; those of calls still going are left to their end; final ones
        missing from the index (Redis lost or restored) are listed again."""
        found = 0
        for folder in await asyncio.to_thread(self.catalog.folders):
            meta = await asyncio.to_thread(self.catalog.read, folder)
            if meta is not None and meta.get("state") in FINAL:
                if await self.catalog.get(meta["call"]) is None:
                    log.warning("! recording missing from the index; listed again",
                                extra={"call_id": meta["call"]})
                    await self.catalog.index(folder, meta)
                continue
            snap = await snapshots(folder.name) or {"id": folder.name}
            if snap.get("state") not in (None, "ended", "failed"):
                # Still going: on another node, or being taken over by this one. Its end
                # queues it like any other call's.
                continue
            found += self.submit(folder, snap, recovered=True)
        return found

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            folder, snap, recovered, _ = job
            self.busy += 1
            self.idle.clear()
            finished = True
            try:
                if (wait := await self._finalize_claimed(folder, snap, recovered)) is not None:
                    finished = False  # another node is at it: see later whether it finished
                    self._later(job, wait)
            except ClaimLost:
                log.warning("! recordings taken over by another node while finalizing",
                            extra={"call_id": snap["id"]})
            except (OSError, aioredis.RedisError) as exc:
                # A full disk, Redis away or hanging: it passes, so the job waits and runs
                # again (its folder stays unfinished on disk, which a restart resumes).
                finished = False
                self._retry(job, exc)
            except Exception:
                log.exception("! finalizing recordings failed", extra={"call_id": snap["id"]})
            finally:
                self.busy -= 1
                if finished:
                    self.done.setdefault(snap["id"], asyncio.Event()).set()
                    self._forget_old()
                self.idle.set()

    def _forget_old(self) -> None:
        """Finished calls are remembered for `wait` up to DONE_KEPT, oldest forgotten
        first: one Event per call for ever would grow without bound."""
        for call_id in [c for c, e in self.done.items() if e.is_set()][:-DONE_KEPT]:
            del self.done[call_id]

    def _retry(self, job: Job, exc: BaseException) -> None:
        folder, snap, recovered, attempt = job
        delay = min(self.retry_cap, self.retry_base * 2 ** min(attempt, 20))
        log.error("! finalizing recordings failed (attempt %d), again in %.1f s: %s",
                  attempt + 1, delay, exc, extra={"call_id": snap["id"]})
        self._later((folder, snap, recovered, attempt + 1), delay)

    def _later(self, job: Job, delay: float) -> None:
        call_id = job[1]["id"]

        def again() -> None:
            self._retries.pop(call_id, None)
            try:
                self.queue.put_nowait(job)
            except asyncio.QueueFull:
                self._later(job, delay)

        self._retries[call_id] = asyncio.get_running_loop().call_later(delay, again)

    async def _finalize_claimed(self, folder: Path, snap: dict[str, Any], recovered: bool
                                ) -> float | None:
        """Finalizes the call under its claim: None when it is done (here or by the node
        that held it before), else how long to wait before looking again (another node
        holds the claim; checked a few times per TTL so a dead holder is replaced soon)."""
        if snap["id"] in self._active:
            return self.claim_ttl / 4
        self._active.add(snap["id"])  # before any await: two of our jobs share a token
        claim = CallClaim(self.catalog.redis, snap["id"], self.claim_ttl, self.token)
        try:
            if not await claim.acquire():
                self._active.discard(snap["id"])
                return max(0.05, min(await claim.remaining(), self.claim_ttl / 4))
        except BaseException:
            self._active.discard(snap["id"])
            raise
        try:
            meta = await asyncio.to_thread(self.catalog.read, folder)
            if meta is not None and meta.get("state") in FINAL:
                return None  # the previous holder finished it
            work = asyncio.create_task(self.finalize(folder, snap, recovered=recovered,
                                                     fence=claim.fence))
            stop = asyncio.Event()
            keeper = asyncio.create_task(claim.keep(stop))
            try:
                await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.set()
                work.cancel()  # the fence stops it too, should the cancel be swallowed
                await asyncio.wait({work, keeper})
            if work.cancelled():
                raise ClaimLost(claim.key)  # not renewed in time: someone else has it
            work.result()
            return None
        finally:
            self._active.discard(snap["id"])
            with contextlib.suppress(aioredis.RedisError, OSError):
                await claim.release()

    async def finalize(self, folder: Path, snap: dict[str, Any], *,
                       recovered: bool = False,
                       fence: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Safe to run again after any failure: the final state is written last, after
        every webhook, and webhooks carry ids derived from what they say. `fence` is
        awaited before every write and webhook (it raises when this node lost the call)."""
        call_id = snap["id"]

        async def write(meta: dict[str, Any]) -> None:
            if fence is not None:
                await fence()
            await self.catalog.write(folder, meta)

        starts, stops, errors = _starts(snap), _stops(snap), _recorder_errors(snap)
        ended = snap.get("endedAt")
        files: list[dict[str, Any]] = []
        problems: list[str] = []
        present = {n for n in await asyncio.to_thread(os.listdir, folder)
                   if n.endswith(".webm") and n != COMPOSED and not n.startswith(".")}
        # Files the hub asked for that never appeared are flagged, not forgotten.
        names = sorted(present | set(snap.get("recordings", [])))
        for name in names:
            path = folder / name
            owner, segment = _owner(name)
            if name not in present:
                problems.append(f"{name}: missing (no media reached the recorder)")
                files.append({"name": name, "participant": owner, "size": 0, "sha256": None,
                              "streams": [], "duration": None, "startedAt": None,
                              "endedAt": None,
                              "problem": "missing (no media reached the recorder)"})
                continue
            stat = await asyncio.to_thread(path.stat)
            info = await probe(path) if stat.st_size else {"error": "empty file"}
            start_list = starts.get(owner, [])
            started = start_list[segment] if segment < len(start_list) else None
            following = start_list[segment + 1] if segment + 1 < len(start_list) else None
            # A call that died with its process has no real end (its history has only the
            # last thing heard of it): the recorder's last write stands for it.
            stopped = min((t for t in stops.get(owner, []) if started and t > started),
                          default=stat.st_mtime if recovered or not ended else ended)
            entry: dict[str, Any] = {
                "name": name, "participant": owner, "size": stat.st_size,
                "sha256": await asyncio.to_thread(sha256_of, path),
                "streams": info.get("streams", []), "duration": info.get("duration"),
                "startedAt": started, "endedAt": stopped if started else None,
                "problem": info.get("error")}
            # The recorder's own error (a full disk, a failed write) flags its file even
            # when what was written before it probes as whole: the rest is missing.
            own = [what for at, what in errors.get(owner, [])
                   if (started is None or at >= started) and (following is None
                                                              or at < following)]
            if own:
                entry["problem"] = "; ".join(own)
            if entry["problem"] is None and not entry["streams"]:
                entry["problem"] = "no streams"
            if entry["problem"] is None and entry["duration"] is None:
                # WebM gets its duration when the recorder closes it: one without was cut
                # off (media server or service killed) and has no index to seek with.
                entry["problem"] = "no duration: the recorder never finished the file"
            if entry["problem"] is None and started:
                entry["problem"] = implausible(entry["duration"], started,
                                               media_end(snap, owner, started, stopped))
            if entry["problem"] is None:
                entry["problem"] = await continuity.check(path)
            if entry["problem"]:
                problems.append(f"{name}: {entry['problem']}")
            files.append(entry)
        meta: dict[str, Any] = {
            "call": call_id, "kind": snap.get("kind"), "callState": snap.get("state"),
            "failure": snap.get("failure"), "createdAt": snap.get("createdAt"),
            "endedAt": snap.get("endedAt"), "mediaServer": snap.get("mediaServer"),
            "participants": [{k: p[k] for k in ("id", "name", "role")}
                             for p in snap.get("participants", [])],
            "files": files, "problems": problems, "recovered": recovered,
            "state": "composing" if self.compose_files else "verifying", "composed": None,
        }
        await write(meta)

        async def publish(event: str, data: dict[str, Any], detail: str) -> None:
            if fence is not None:
                await fence()
            await self.publish(event, {"call": {"id": call_id}, **data},
                               event_id(call_id, event, detail))

        for problem in problems:
            log.error("! recording flagged: %s", problem, extra={"call_id": call_id})
            await publish("recording.failed", {"problem": problem, "recovered": recovered},
                          problem)
        good = [f for f in files if not f["problem"]]
        if self.compose_files and good:
            if fence is not None:
                await fence()  # ffmpeg is the longest step: not for a call we lost
            await self._compose(folder, meta, good, fence)
            if meta["composed"] is None:
                await publish("recording.failed", {"problem": meta["problems"][-1],
                                                   "recovered": recovered},
                              meta["problems"][-1])
        if not files:
            await publish("recording.failed", {"problem": "no files", "recovered": recovered},
                          "no files")
        elif good:
            # Something can be watched; what cannot was reported above, one event each.
            await publish("recording.ready", {
                "files": [f["name"] for f in files],
                "composed": meta["composed"]["name"] if meta["composed"] else None,
                "problems": problems}, "ready")
        meta["state"] = "flagged" if problems else ("ready" if meta["composed"] else "verified")
        await write(meta)
        return meta

    async def _compose(self, folder: Path, meta: dict[str, Any], good: list[dict[str, Any]],
                       fence: Callable[[], Awaitable[None]] | None) -> None:
        first = min((f["startedAt"] for f in good if f["startedAt"]), default=None)
        streams = [Stream(folder / f["name"],
                          max(0.0, (f["startedAt"] - first) if first and f["startedAt"]
                              else 0.0),
                          "audio" in f["streams"], "video" in f["streams"]) for f in good]
        out = folder / COMPOSED
        error = await compose(streams, out, fence=fence)
        if error is not None:
            meta["problems"].append(f"{COMPOSED}: {error}")
            return
        # ffmpeg creates it with the umask's mode; it is a consultation, its owner's alone.
        await asyncio.to_thread(out.chmod, 0o600)
        info = await probe(out)
        meta["composed"] = {"name": COMPOSED, "size": out.stat().st_size,
                            "sha256": await asyncio.to_thread(sha256_of, out),
                            "streams": info.get("streams", []),
                            "duration": info.get("duration")}
