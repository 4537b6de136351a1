"""Shared bits: percentiles and the report format."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = [
    "Child",
    "args",
    "bench_main",
    "cpu_seconds",
    "pct",
    "raise_nofile",
    "report",
    "rss_kib",
    "serve_commands",
    "serve_ws",
    "tokens",
    "write_json",
]


def args(description: str, **defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="a few seconds; for the tests")
    for name, value in defaults.items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser.parse_args()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def report(name: str, figures: dict[str, Any]) -> None:
    """Human lines, then one JSON line (`RESULT {...}`) that tools and tests read."""
    print(f"== {name} ({platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()})")
    for key, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<40} {shown}")
    print("RESULT " + json.dumps({"bench": name, **figures}))
    sys.stdout.flush()


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# ---------------------------------------------------------------- processes
#
# A benchmark's server and its load each run in a child process that speaks JSON lines:
# the child prints `READY {...}` once it is up, then answers each command line with one
# JSON line. The parent stays synchronous and reads the server's RSS and CPU from /proc.

TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Lifts the open-files soft limit to the hard limit; thousands of sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Child:
    """A child process (`python -m <module> <args>`) driven by JSON command lines."""

    def __init__(self, module: str, *argv: str, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", module, *argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, bufsize=1)
        line = self._line()
        if not line.startswith("READY "):
            raise RuntimeError(f"{module} did not start: {line!r}\n{self.stderr()}")
        self.ready: dict[str, Any] = json.loads(line[len("READY "):])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-3000:]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"child {self.proc.args} gave no answer\n{self.stderr()}")
        return line.strip()

    def ask(self, cmd: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line())
        if "error" in answer:
            raise RuntimeError(f"{cmd} failed in the child: {answer['error']}\n"
                               f"{self.stderr()}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_commands(ready: dict[str, Any], handlers: dict[str, Handler]) -> None:
    """The child's side: announces itself, then answers commands until stdin closes."""
    loop = asyncio.get_running_loop()
    print("READY " + json.dumps(ready), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        body = json.loads(line)
        try:
            answer = await handlers[body.pop("cmd")](body)
        except Exception as exc:  # reported to the parent, which fails loudly
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


def tokens(path: str | None, n: int) -> list[str]:
    """The first `n` join tokens a hub process wrote (pairs, one per call); placeholders
    for a bare server, which checks none."""
    if not path:
        return ["-"] * n
    return [t for pair in json.loads(Path(path).read_text()) for t in pair][:n]


def write_json(path: str, value: Any) -> None:
    Path(path).write_text(json.dumps(value))


@contextlib.asynccontextmanager
async def serve_ws(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                   path: str) -> AsyncIterator[int]:
    """Serves one WebSocket route on a free loopback port; yields the port."""
    from tests.services import free_port

    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def bench_main(name: str, doc: str, measure: Callable[[argparse.Namespace, str, Path],
                                                       dict[str, Any]],
               load: Callable[[], Awaitable[None]] | None, smoke: dict[str, Any],
               **defaults: Any) -> None:
    """`python -m bench.<name>`: the load process when asked for it (`--load`), else the
    benchmark, with a real redis-server for the hub."""
    if load is not None and sys.argv[1:] == ["--load"]:
        raise_nofile()
        asyncio.run(load())  # type: ignore[arg-type]
        return
    from tests.services import run_redis

    opts = args(doc, **defaults)
    if opts.smoke:
        vars(opts).update(smoke)
    raise_nofile()
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp) / "redis") as redis:
        figures = measure(opts, redis.url, Path(tmp))
    report(name, figures)
