"""Real services for tests: redis-server (alone, or a primary, a replica and sentinels),
coturn turnserver, headless Chromium.

Each is started on loopback on free ports by a context manager and stopped on exit.
A missing binary is a test failure, never a skip: the project's `./dev test` installs them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def require_binary(name: str) -> str:
    """Path of `name`, or fail the test: missing tools never skip."""
    path = shutil.which(name) or (
        name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    )
    if path is None:
        pytest.fail(f"required binary {name!r} is not installed; run ./dev test to install it")
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct free TCP ports: each socket is held until all are chosen, since the
    kernel may hand a just-closed port out again (two free_port() calls gave the same one,
    and a sentinel group's primary and replica one folder, in a CI run)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                   for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(int(s.getsockname()[1]) for s in sockets)


def free_udp_and_tcp_port() -> int:
    """A port free for both TCP and UDP: coturn listens on both, and a port taken for TCP
    only (an ephemeral connection's) left it serving UDP alone, unseen by `wait_port`."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def free_port_range(size: int) -> tuple[int, int]:
    """A block of `size` ports that are free for UDP now (best effort)."""
    for _ in range(50):
        start = free_port(socket.SOCK_DGRAM)
        if start + size >= 65535:
            continue
        ok = True
        for port in range(start, start + size):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + size - 1
    raise RuntimeError("no free UDP port range")


def wait_port(
    port: int, *, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class RedisServer:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def run_redis(tmp: Path) -> Iterator[RedisServer]:
    binary = require_binary("redis-server")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield RedisServer(port=port, pid=proc.pid)
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class TurnServer:
    port: int
    secret: str
    realm: str
    pid: int
    log_file: Path
    min_port: int
    max_port: int

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_turnserver(
    tmp: Path, *, redis_userdb: str | None = None, realm: str = "telemed.test",
    relay_ip: str = "127.0.0.1", secrets_: tuple[str, ...] = (),
) -> Iterator[TurnServer]:
    """coturn on loopback, shared-secret auth (or a Redis user DB), loopback peers allowed.

    `secrets_`: every static-auth-secret coturn accepts (rotation); by default one fresh one.
    """
    binary = require_binary("turnserver")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_udp_and_tcp_port()
    lo, hi = free_port_range(40)
    accepted = secrets_ or (secrets.token_hex(16),)
    secret = accepted[0]
    args = [
        binary,
        "-n",
        "--listening-ip=127.0.0.1",
        f"--relay-ip={relay_ip}",
        f"--listening-port={port}",
        f"--min-port={lo}",
        f"--max-port={hi}",
        f"--realm={realm}",
        "--fingerprint",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
        "--no-cli",
        f"--userdb={tmp}/turndb",
        f"--log-file={tmp}/turn.log",
        "--simple-log",
        f"--pidfile={tmp}/turn.pid",
    ]
    if redis_userdb is None:
        args += ["--use-auth-secret", *(f"--static-auth-secret={s}" for s in accepted)]
    else:
        args += ["--lt-cred-mech", f"--redis-userdb={redis_userdb}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)  # coturn listens on TCP too
        yield TurnServer(
            port=port,
            secret=secret,
            realm=realm,
            pid=proc.pid,
            log_file=tmp / "turn.log",
            min_port=lo,
            max_port=hi,
        )
    finally:
        stop_process(proc)


@dataclass
class SentinelGroup:
    """A primary, one replica and three sentinels watching them as `service`."""

    service: str
    sentinel_ports: tuple[int, ...]
    #: port → the redis-server (primary or replica) listening on it.
    servers: dict[int, subprocess.Popen[bytes]]
    first_primary: int

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"


def _sentinel_config(path: Path, port: int, primary: int, service: str, *,
                     down_after_ms: int, failover_timeout_ms: int) -> None:
    path.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {path.parent}",
        f"sentinel monitor {service} 127.0.0.1 {primary} 2",
        f"sentinel down-after-milliseconds {service} {down_after_ms}",
        f"sentinel failover-timeout {service} {failover_timeout_ms}",
        f"sentinel parallel-syncs {service} 1", ""]))


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """For fixtures, which run outside the event loop: a process table has no event."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(0.05)


@contextlib.contextmanager
def run_sentinel_group(tmp: Path, *, service: str = "telemed", down_after_ms: int = 500,
                       failover_timeout_ms: int = 2000) -> Iterator[SentinelGroup]:
    """redis-server primary and replica (`--replicaof`) and three `redis-server --sentinel`,
    on loopback; returns once the replica is in sync and every sentinel knows the other two
    and the replica, so that a failover can start at once. The short down-after and
    failover timeout make a failover take about 1-3 s."""
    import redis as sync_redis

    binary = require_binary("redis-server")
    tmp.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[int, subprocess.Popen[bytes]] = {}

    def start(argv: list[str], port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_port(port, proc=proc)
        return proc

    def ask(port: int, question: Callable[[sync_redis.Redis], Any]) -> Any:
        with sync_redis.Redis(port=port, socket_timeout=1, decode_responses=True) as c:
            return question(c)

    try:
        primary, replica = free_ports(2)
        for port, extra in ((primary, []), (replica, ["--replicaof", "127.0.0.1", str(primary)])):
            folder = tmp / f"redis-{port}"
            folder.mkdir()
            servers[port] = start([binary, "--port", str(port), "--bind", "127.0.0.1",
                                   "--dir", str(folder), "--save", "", "--appendonly", "no",
                                   *extra], port)
        _until(lambda: ask(replica, lambda c: c.info("replication")).get(
            "master_link_status") == "up", "replica in sync")
        ports = free_ports(3)
        for port in ports:
            conf = tmp / f"sentinel-{port}" / "sentinel.conf"
            conf.parent.mkdir()
            _sentinel_config(conf, port, primary, service, down_after_ms=down_after_ms,
                             failover_timeout_ms=failover_timeout_ms)
            start([binary, str(conf), "--sentinel"], port)

        def ready() -> bool:
            for port in ports:
                state = ask(port, lambda c: c.sentinel_master(service))
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
            return True

        _until(ready, "sentinels knowing each other and the replica")
        yield SentinelGroup(service, ports, servers, primary)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
