"""The supervisor with real child processes: restart on death, no orphans on stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from telemed.supervisor import ChildSpec, ChildState, Supervisor
from tests.helpers import scaled, wait_until, within

# A child that starts a grandchild in its own group, reports both pids, then waits.
CHILD = """
import os, subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "a").write(f"{os.getpid()} {g.pid}\\n")
print("child up", flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def spec(tmp_path: Path, **kw: object) -> ChildSpec:
    return ChildSpec(
        name="sleeper",
        argv=[sys.executable, "-c", CHILD, str(tmp_path / "pids")],
        restart_delays=(0.01,),
        stop_timeout=scaled(2),
        **kw,  # type: ignore[arg-type]
    )


def pids(tmp_path: Path) -> list[tuple[int, int]]:
    path = tmp_path / "pids"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().split("\n") if line]  # type: ignore[misc]


async def test_a_killed_child_is_restarted(tmp_path: Path) -> None:
    """A child killed with SIGKILL is started again with a new pid and its exit is recorded."""
    sup = Supervisor()
    child = sup.add(spec(tmp_path))
    await sup.start()
    try:
        first = child.pid
        assert first is not None and child.state is ChildState.RUNNING
        os.kill(first, signal.SIGKILL)
        await within(child.wait_for(lambda c: c.starts == 2 and c.ready, scaled(10)), 10,
                     "restart")
        assert child.pid != first
        assert child.last_exit == -signal.SIGKILL
    finally:
        await sup.stop()
    for _, grandchild in pids(tmp_path):
        await wait_until(lambda g=grandchild: not alive(g), describe=lambda: pids(tmp_path))


async def test_stop_leaves_no_child_or_grandchild_running(tmp_path: Path) -> None:
    """Stopping the supervisor ends the child and the grandchild the child started."""
    sup = Supervisor()
    sup.add(spec(tmp_path))
    await sup.start()
    await wait_until(lambda: len(pids(tmp_path)) == 1, describe=lambda: pids(tmp_path))
    [(child_pid, grandchild_pid)] = pids(tmp_path)
    assert alive(child_pid) and alive(grandchild_pid)
    await sup.stop()
    assert sup.status()["sleeper"]["state"] == "stopped"
    assert not alive(child_pid)
    await wait_until(lambda: not alive(grandchild_pid), describe=lambda: grandchild_pid)


async def test_children_die_when_the_supervisor_process_is_killed(tmp_path: Path) -> None:
    """Killing the supervisor's process outright takes its child down with it (no orphan)."""
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from telemed.supervisor import ChildSpec, Supervisor
async def main():
    sup = Supervisor()
    sup.add(ChildSpec(name="c", argv=[sys.executable, "-c", {CHILD!r}, {str(tmp_path / 'pids')!r}]))
    await sup.start()
    print("ready", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), scaled(20))
        assert line.strip() == b"ready"
        await wait_until(lambda: len(pids(tmp_path)) == 1, describe=lambda: pids(tmp_path))
        [(child_pid, _)] = pids(tmp_path)
        assert alive(child_pid)
        parent.kill()
        await parent.wait()
        await wait_until(lambda: not alive(child_pid), describe=lambda: f"child {child_pid}")
    finally:
        # The grandchild has no death signal of its own; this test's concern is the child.
        for _, grandchild in pids(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_a_child_that_never_becomes_ready_fails_start(tmp_path: Path) -> None:
    """start() raises 'did not become ready' when a probe never passes, and leaves no child."""
    async def never() -> bool:
        return False

    sup = Supervisor()
    sup.add(spec(tmp_path, probe=never, ready_timeout=scaled(0.3)))
    try:
        try:
            await sup.start()
        except RuntimeError as exc:
            assert "did not become ready" in str(exc)
        else:
            raise AssertionError("start() succeeded with a child that is never ready")
    finally:
        await sup.stop()
    assert all(not alive(c) for c, _ in pids(tmp_path))


async def test_a_child_that_keeps_dying_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    """A crash-looping child is restarted after each delay in turn, the last one repeating."""
    stamps = tmp_path / "starts"
    # CLOCK_MONOTONIC is one clock for every process on Linux: stamps compare across them.
    crasher = ("import sys, time\n"
               f"open({str(stamps)!r}, 'a').write(f'{{time.monotonic()}}\\n')\n"
               "sys.exit(3)\n")
    unit = scaled(0.1)
    delays = (unit, 2 * unit, 4 * unit)
    sup = Supervisor()
    child = sup.add(ChildSpec(name="crasher", argv=[sys.executable, "-c", crasher],
                              restart_delays=delays, stop_timeout=scaled(2)))
    await sup.start(wait_ready=False)
    try:
        await within(child.wait_for(lambda c: c.starts >= 5, scaled(20)), 20, "five starts")
        assert child.last_exit == 3
    finally:
        await sup.stop()
    times = [float(line) for line in stamps.read_text().split()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each restart waits at least its delay; the last delay repeats.
    for gap, delay in zip(gaps, (*delays, delays[-1]), strict=False):
        assert gap >= delay, (gaps, delays)
    assert child.state is ChildState.STOPPED


async def test_child_lines_in_our_log_format_keep_their_level_and_call_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Child output in logfmt or JSON is logged with its level and call_id; plain lines
    (coturn's banner, redis) as DEBUG unless their own words say ERROR or WARNING, so a
    newcomer's console at INFO shows only what matters."""
    caplog.set_level(logging.DEBUG)
    talker = (
        "import sys, time\n"
        "print('ts=2026-01-01T00:00:00.000Z level=error logger=mediaserver.webrtc '\n"
        "      'call_id=c-42 msg=\"! ICE failed \\\\\"hard\\\\\"\"')\n"
        "print('{\"ts\": \"x\", \"level\": \"warning\", \"logger\": \"m\", \"msg\": \"slow\", '\n"
        "      '\"call_id\": \"c-43\"}')\n"
        "print('1234:M Redis is starting')\n"
        "print('0: : ERROR: Cannot bind listener socket to device')\n"
        "print('1234:M # WARNING overcommit_memory is set to 0', flush=True)\n"
        "time.sleep(600)\n")
    sup = Supervisor()
    sup.add(ChildSpec(name="talker", argv=[sys.executable, "-c", talker],
                      stop_timeout=scaled(2)))
    await sup.start()
    try:
        def lines() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "telemed.child.talker"]
        await wait_until(lambda: len(lines()) == 5,
                         describe=lambda: [r.getMessage() for r in lines()])
    finally:
        await sup.stop()
    error, warning, plain, coturn_error, redis_warning = lines()
    assert (error.levelno, error.getMessage(), error.call_id, error.child) == (  # type: ignore[attr-defined]
        logging.ERROR, '! ICE failed "hard"', "c-42", "talker")
    assert error.child_logger == "mediaserver.webrtc"  # type: ignore[attr-defined]
    assert (warning.levelno, warning.getMessage(), warning.call_id) == (  # type: ignore[attr-defined]
        logging.WARNING, "slow", "c-43")
    assert (plain.levelno, plain.getMessage()) == (logging.DEBUG, "1234:M Redis is starting")
    assert coturn_error.levelno == logging.ERROR
    assert redis_warning.levelno == logging.WARNING


async def test_a_child_that_outlives_the_service_survives_its_kill_and_is_reattached(
    tmp_path: Path
) -> None:
    """`outlives`: the supervisor's process is SIGKILLed and the child goes on; the next
    supervisor finds it by its pid file and watches it instead of starting another; when
    it dies, it is started again; a full stop ends it and removes the pid file."""
    state = tmp_path / "run"
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from pathlib import Path
from telemed.supervisor import ChildSpec, Supervisor
async def main():
    sup = Supervisor()
    sup.add(ChildSpec(name="sleeper", argv=[sys.executable, "-c", {CHILD!r},
                      {str(tmp_path / 'pids')!r}], outlives=Path({str(state)!r})))
    await sup.start()
    print("ready", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    try:
        assert parent.stdout is not None
        assert (await asyncio.wait_for(parent.stdout.readline(), scaled(20))).strip() \
            == b"ready"
        await wait_until(lambda: len(pids(tmp_path)) == 1, describe=lambda: pids(tmp_path))
        [(child_pid, _)] = pids(tmp_path)
        parent.kill()
        await parent.wait()
        assert alive(child_pid)
        assert "child up" in (state / "sleeper.log").read_text()

        sup = Supervisor()
        child = sup.add(spec(tmp_path, outlives=state))
        await sup.start()
        try:
            assert child.pid == child_pid and child.starts == 0 and child.ready
            os.kill(child_pid, signal.SIGKILL)
            await within(child.wait_for(lambda c: c.starts == 1 and c.ready, scaled(10)),
                         10, "a new child after the reattached one died")
            assert child.pid != child_pid
            await wait_until(lambda: len(pids(tmp_path)) == 2, describe=lambda: pids(tmp_path))
        finally:
            await sup.stop()
        assert not alive(child.pid or pids(tmp_path)[-1][0])
        assert not (state / "sleeper.pid").exists()
    finally:
        for pair in pids(tmp_path):
            for pid in pair:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_a_keeping_stop_leaves_an_outliving_child_for_the_next_start(
    tmp_path: Path
) -> None:
    """stop(keep=True) (a clean stop that expects a restart) leaves the outliving child and
    its pid file; a pid file naming a process that is gone starts a fresh child."""
    state = tmp_path / "run"
    first = Supervisor()
    child = first.add(spec(tmp_path, outlives=state))
    await first.start()
    pid = child.pid
    assert pid is not None
    await first.stop(keep=True)
    try:
        assert alive(pid) and (state / "sleeper.pid").exists()
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not alive(pid), describe=lambda: pid)
        second = Supervisor()
        again = second.add(spec(tmp_path, outlives=state))
        await second.start()
        assert again.starts == 1 and again.pid != pid
        await second.stop()
    finally:
        for pair in pids(tmp_path):
            for p in pair:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
