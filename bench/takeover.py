"""Takeover at scale: N live recorded calls on a service that is SIGKILLed and started again.

Real Redis, the embedded media server as its own process, the service as its own process
(`python -m telemed.cli run`, what is killed), and two aiortc participants per call in
this process speaking our WebSocket protocol. The participants encode and decode nothing:
each plays a VP8/Opus WEBM made once by ffmpeg (packets read once, replayed paced in real
time) and counts the encoded frames the server's receive hook hands over, so the two cores
go to the server, the service and the peers' RTP, not to codecs.

Calls are added `--step` at a time while every stream keeps >= 98 % of its video frames
(a window after each step); a step that breaks that is ended again and N is the calls
that fit. Then: a window of the calls left alone (baseline for frame loss), SIGKILL,
restart, and at the moment /readyz answers every participant reconnects at once and sends
`join {resume: true}` (the worst case: all browsers come back together). Figures:

- restart to ready (the baseline): spawn of the new process to /readyz 200; and the first
  start, with no calls, for comparison;
- per call, ready to both participants' `joined` with `resumed: true` (p50/max), and when
  the service's log says it adopted the call, relative to ready (negative: before; the
  service adopts before it serves, one call after another, and each call's rejoin grace
  runs from its adoption);
- calls failed: not resumed, not live, no video after the resume, or not ended normally;
- video frames lost per call (sent minus received, both directions, from the kill to 1 s
  after the last resume) and the longest wait between two frames per viewer (p50/max),
  with the same figures for the baseline window.

`--fit 0` keeps every call asked for, fitting or not: the takeover's timings at that
many calls, on an overloaded machine.

Video is 160x120@10 (100 kbit/s VP8) with 20 ms Opus by default, lighter than a
browser's, so that more calls fit two cores; the output says what was used.

    python -m bench.takeover [--calls 50] [--step 2] [--width 160] [--height 120] [--fps 10]
                             [--fit 0.98]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import args, cpu_seconds, pct, raise_nofile, report
from bench.takeover_peers import Packets, Participant, clip, more_video
from telemed.embedded import hash_api_key
from tests.services import free_port, run_redis

FIT = 0.98
#: What a frame may take from its sender to its viewer: received counts are read this
#: much after the sent ones.
IN_FLIGHT = 1.0


class Node:
    """The service as its own process, restartable on the same port, data and Redis."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Spawns the service; seconds until /readyz answers 200."""
        started = time.monotonic()
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telemed.cli", "run", env=self.env, stderr=err,
                stdout=err)
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc.returncode is None, f"the service exited; see {self.log}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return time.monotonic() - started
                await asyncio.sleep(0.02)  # another process: no event to await

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()
        self.proc = None

    def adopted_at(self, since: float) -> tuple[float, dict[str, float]]:
        """From the log lines stamped after `since` (wall time): when the first was
        written (the interpreter and imports are done), and per call id when the service
        logged taking it over."""
        first, out = float("inf"), {}
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                ts = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
                if ts >= since:
                    first = min(first, ts)
                    if str(entry.get("msg", "")).startswith("= call taken over"):
                        out[entry["call_id"]] = ts
        return first, out


Call = tuple[str, Participant, Participant]  # id, patient, doctor


async def new_call(node: Node, api_key: str, clip_packets: dict[str, Packets]) -> Call:
    """A consultation created through the API, joined, published both ways and live."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{node.url}/api/v1/calls", headers={"Authorization": f"Bearer {api_key}"},
            json={"kind": "consultation",
                  "participants": [{"id": "pat", "name": "P", "role": "patient"},
                                   {"id": "doc", "name": "D", "role": "doctor"}]}) as r:
        assert r.status == 201, await r.text()
        created = await r.json()
    tokens = {p["id"]: p["token"] for p in created["participants"]}
    pat, doc = (Participant(node, tokens[p], clip_packets) for p in ("pat", "doc"))
    await asyncio.gather(pat.connect(), doc.connect())
    await pat.join()  # one after the other: simultaneous joins race (issue #20)
    await doc.join()
    await asyncio.gather(pat.publish(), doc.publish())
    await asyncio.gather(pat.subscribe("doc"), doc.subscribe("pat"))
    await asyncio.gather(pat.wait_event("callLive", timeout=60),
                         doc.wait_event("callLive", timeout=60))
    return created["id"], pat, doc


def streams(calls: list[Call]) -> list[tuple[Participant, Participant, str]]:
    """(publisher, viewer, publisher's id) for both directions of every call."""
    return [s for _, pat, doc in calls for s in ((pat, doc, "pat"), (doc, pat, "doc"))]


@dataclass
class Window:
    lost: list[float]  # video frames lost per call, both directions
    gaps: list[float]  # longest wait between two video frames, per viewer (s)
    ratio: list[float]  # video frames delivered over sent, per stream
    cpu: dict[str, float]  # % of one core, per process

    @property
    def worst(self) -> float:
        return min(self.ratio)


async def window(calls: list[Call], until: asyncio.Future[Any] | float,
                 pids: dict[str, int]) -> Window:
    """From now until `until` (seconds, or a future) is done; received counts are read
    IN_FLIGHT after the sent ones."""
    flows = streams(calls)

    def sent() -> list[int]:
        return [p.video.sent if p.video else 0 for p, _, _ in flows]

    def got() -> list[int]:
        return [v.received[src]["video"] for _, v, src in flows]

    s0, t0 = sent(), time.monotonic()
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for _, viewer, _ in flows:
        viewer.reset_gaps()
    await asyncio.sleep(IN_FLIGHT)  # frames sent before the window arrive meanwhile
    g0 = got()
    if isinstance(until, float):
        await asyncio.sleep(max(until - IN_FLIGHT, 0.0))  # the window itself
    else:
        await until
    s1, elapsed = sent(), time.monotonic() - t0
    cpu = {name: round(100 * (cpu_seconds(pid) - cpu0[name]) / elapsed, 1)
           for name, pid in pids.items() if name in cpu0}
    await asyncio.sleep(IN_FLIGHT)  # the window's last frames arrive
    g1 = got()
    counts = list(zip(s0, s1, g0, g1, strict=True))
    lost = [float(max((b - a) - (d - c), 0)) for a, b, c, d in counts]
    return Window(
        lost=[lost[i] + lost[i + 1] for i in range(0, len(lost), 2)],
        gaps=[v.gap.get(src, float("inf")) for _, v, src in flows],
        # One frame of slack: a frame sent on the window's edge may count on either side.
        ratio=[min((d - c + 1) / (b - a), 1.0) if b > a else 0.0 for a, b, c, d in counts],
        cpu=cpu)


async def ramp(node: Node, api_key: str, clip_packets: dict[str, Packets], opts: Any,
               pids: dict[str, int], figures: dict[str, Any]) -> list[Call]:
    """Adds calls `step` at a time while every stream keeps `fit` of its video; a step that
    breaks it is ended again, and the calls left get up to 3 windows to settle."""
    calls: list[Call] = []
    while len(calls) < opts.calls:
        batch = await asyncio.gather(*(new_call(node, api_key, clip_packets) for _ in range(
            min(opts.step, opts.calls - len(calls)))))
        w = await window(calls + batch, opts.window, pids)
        n = len(calls) + len(batch)
        figures[f"ramp_{n}_calls_worst_delivery"] = round(w.worst, 3)
        print(f"  {n} calls: worst stream {w.worst:.3f}, CPU % of a core {w.cpu}", flush=True)
        if w.worst < opts.fit and calls:
            for _, pat, doc in batch:  # the machine's limit: the kill runs without them
                await doc.request("end")
                await asyncio.gather(pat.close(), doc.close())
            for _ in range(3):
                w = await window(calls, opts.window, pids)
                print(f"  back to {len(calls)} calls: worst stream {w.worst:.3f}", flush=True)
                if w.worst >= opts.fit:
                    break
            break
        calls += batch
    return calls


async def run(opts: Any, tmp: Path, redis_url: str) -> dict[str, Any]:
    clip_packets = clip(opts.width, opts.height, opts.fps, opts.kbps)
    figures: dict[str, Any] = {"cores": os.cpu_count(), "calls_asked": opts.calls,
                               "video": f"{opts.width}x{opts.height}@{opts.fps}",
                               "load_average_1m": os.getloadavg()[0]}
    api_key = uuid.uuid4().hex
    kms_port = free_port()
    (tmp / "recordings").mkdir()
    env = {**os.environ, "TELEMED_HTTP_PORT": str(free_port()),
           "TELEMED_DATA_DIR": str(tmp / "data"),
           "TELEMED_RECORDINGS_DIR": str(tmp / "recordings"),
           "TELEMED_RECORDINGS_COMPOSE": "false", "TELEMED_REDIS_URL": redis_url,
           "TELEMED_MEDIA_KURENTO_URLS": f"ws://127.0.0.1:{kms_port}/kurento",
           # The rejoin grace stays the default: adoption before serving must fit in it.
           # A longer watchdog: setting calls up on a loaded machine is not measured.
           "TELEMED_TURN_PROVIDER": "none", "TELEMED_CALLS_WATCHDOG_TIMEOUT": "60",
           "TELEMED_LOG_FORMAT": "json",
           "TELEMED_AUTH_API_KEY_HASHES": hash_api_key(api_key)}
    node = Node(env, int(env["TELEMED_HTTP_PORT"]), tmp / "service.log")
    calls: list[Call] = []
    async with media_server(kms_port, tmp) as (media_pid, media_log):
        try:
            figures["baseline_first_start_to_ready_s"] = await node.start()
            assert node.proc is not None
            pids = {"mediaserver": media_pid, "service": node.proc.pid, "peers": os.getpid()}
            calls = await ramp(node, api_key, clip_packets, opts, pids, figures)
            figures["calls"] = len(calls)
            w = await window(calls, opts.window, pids)
            figures |= {"baseline_window_s": opts.window,
                        "baseline_worst_delivery": w.worst,
                        "baseline_frames_lost_per_call_p50": pct(w.lost, 50),
                        "baseline_frames_lost_per_call_max": max(w.lost),
                        "baseline_longest_gap_s_p50": pct(w.gaps, 50),
                        "baseline_longest_gap_s_max": max(w.gaps),
                        **{f"baseline_cpu_pct_{k}": v for k, v in w.cpu.items()}}
            del pids["service"]  # killed in the next window
            loop = asyncio.get_running_loop()
            resumed_all: asyncio.Future[None] = loop.create_future()
            kill_window = asyncio.ensure_future(window(calls, resumed_all, pids))
            await asyncio.sleep(0)  # the window's first counts are taken before the kill
            await node.kill()
            killed, killed_wall = time.monotonic(), time.time()
            figures["restart_to_ready_s"] = await node.start()
            ready, ready_wall = time.monotonic(), time.time()
            figures["killed_to_ready_s"] = ready - killed
            failed = await resume_all(calls, ready, figures)
            await asyncio.sleep(IN_FLIGHT)  # the window runs a second past the last resume
            resumed_all.set_result(None)
            w = await kill_window
            figures |= {"kill_window_s": time.monotonic() - killed,
                        "kill_worst_delivery": w.worst,
                        "kill_frames_lost_per_call_p50": pct(w.lost, 50),
                        "kill_frames_lost_per_call_max": max(w.lost),
                        "kill_longest_gap_s_p50": pct(w.gaps, 50),
                        "kill_longest_gap_s_max": max(w.gaps),
                        **{f"kill_cpu_pct_{k}": v for k, v in w.cpu.items()}}
            first_line, adopted = node.adopted_at(killed_wall)
            late = [adopted[c] - ready_wall if c in adopted else float("inf")
                    for c, _, _ in calls]
            # Each call's rejoin grace runs from its adoption, before the service serves:
            # the first one adopted has this much less of it left at ready.
            figures |= {"first_adopted_to_ready_s": -min(late),
                        "adoption_span_s": max(late) - min(late),
                        "adopted_after_ready_s_min": min(late),
                        "adopted_after_ready_s_p50": pct(late, 50),
                        "adopted_after_ready_s_max": max(late),
                        "calls_not_adopted": sum(c not in adopted for c, _, _ in calls),
                        "restart_to_first_log_line_s": first_line - killed_wall}
            async def video(call_id: str, viewer: Participant, source: str) -> None:
                if not await more_video(viewer, source, opts.fps, 15):
                    print(f"  ! {call_id}: no video from {source} after the resume",
                          flush=True)
                    failed.add(call_id)

            async def end(call_id: str, pat: Participant, doc: Participant) -> None:
                try:
                    await doc.request("end")
                    await asyncio.gather(pat.wait_event("callEnded"),
                                         doc.wait_event("callEnded"))
                except Exception as exc:
                    print(f"  ! {call_id}: did not end normally: {exc}", flush=True)
                    failed.add(call_id)

            await asyncio.gather(*(video(c, viewer, source) for c, pat, doc in calls
                                   for viewer, source in ((pat, "doc"), (doc, "pat"))))
            await asyncio.gather(*(end(*call) for call in calls))
            figures["calls_failed"] = len(failed)
            figures["target_adopted_within_2s_of_ready_met"] = bool(
                failed == set() and figures["resumed_after_ready_s_max"] <= 2.0)
        finally:
            await asyncio.gather(*(c.close() for _, pat, doc in calls for c in (pat, doc)))
            await node.kill(signal.SIGTERM)
        figures["mediaserver_warnings"] = sum(
            line.startswith("WARNING") for line in media_log.read_text().splitlines())
    return figures


@contextlib.asynccontextmanager
async def media_server(port: int, tmp: Path) -> AsyncIterator[tuple[int, Path]]:
    """`python -m mediaserver` as its own process, its log in a file (overload warnings
    are counted, not printed); yields its pid and the log's path."""
    log = tmp / "mediaserver.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mediaserver", "--port", str(port), "--recordings-root",
            str(tmp / "recordings"), "--log-level", "WARNING", stdout=err, stderr=err)
    try:
        while True:
            assert proc.returncode is None, f"the media server exited; see {log}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)  # another process starting: no event to await
        yield proc.pid, log
    finally:
        proc.terminate()
        await proc.wait()


async def resume_all(calls: list[Call], ready: float, figures: dict[str, Any]) -> set[str]:
    """Every participant comes back at once; per call, ready to its last `resumed`. The
    ids of calls whose resume was refused or failed."""
    failed: set[str] = set()
    done: dict[str, float] = {}

    async def one(call_id: str, who: Participant, other: str) -> None:
        try:
            reply = await who.resume()
        except Exception as exc:
            print(f"  ! {call_id}: resume failed: {exc}", flush=True)
            failed.add(call_id)
            return
        done[call_id] = max(done.get(call_id, 0.0), time.monotonic() - ready)
        if reply.get("resumed") is not True or reply["call"]["state"] != "live" \
                or reply["media"]["subscriptions"] != [other]:
            print(f"  ! {call_id}: not resumed: {json.dumps(reply)[:300]}", flush=True)
            failed.add(call_id)
            return
        await who.media_received(other)  # as the protocol asks after a resume

    await asyncio.gather(*(one(c, who, other) for c, pat, doc in calls
                           for who, other in ((pat, "doc"), (doc, "pat"))))
    times = [done.get(c, float("inf")) for c, _, _ in calls]
    figures |= {"resumed_after_ready_s_p50": pct(times, 50),
                "resumed_after_ready_s_max": max(times), "resumes_refused": len(failed)}
    return failed


def main() -> None:
    opts = args(__doc__ or "", calls=50, step=2, width=160, height=120, fps=10, kbps=100, fit=FIT,
                window=3.0)
    if opts.smoke:
        opts.calls, opts.step, opts.window = 2, 2, 2.0
    print(f"  peers replay {opts.width}x{opts.height}@{opts.fps} VP8 ({opts.kbps} kbit/s) and "
          "20 ms Opus, encoded once: lighter than a browser, to fit more calls", flush=True)
    raise_nofile()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp) / "redis") as redis:
        figures = asyncio.run(run(opts, Path(tmp), redis.url))
    if figures["calls"] < opts.calls:
        print(f"  only {figures['calls']} of {opts.calls} calls fit this machine "
              f"(>= {opts.fit:.0%} of every stream's video before the kill)")
    if opts.fit < FIT:
        print(f"  --fit {opts.fit} is below {FIT:.0%}: the media figures are of an overloaded "
              "machine; the takeover's timings are the point")
    report("takeover", figures)


if __name__ == "__main__":
    main()
