"""The embedded default: what `telemed run` starts itself when no external service is given.

`plan(settings)` returns the child processes to supervise and the endpoints the service
should use (`Endpoints`), whether they are embedded children or external URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from telemed.detached import PidFile
from telemed.settings import Settings
from telemed.supervisor import ChildSpec
from turn.providers.coturn import DENIED_PEERS

__all__ = ["Endpoints", "Secrets", "load_secrets", "plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Secrets:
    """Secrets generated on first start and kept (mode 0600) in the data folder."""

    jwt_secret: str
    turn_secret: str
    api_key: str


def load_secrets(data_dir: Path) -> Secrets:
    path = data_dir / "secrets.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, str] = {}
    if path.exists():
        values = json.loads(path.read_text())
    changed = False
    for key in ("jwt_secret", "turn_secret", "api_key"):
        if not values.get(key):
            values[key] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return Secrets(jwt_secret=values["jwt_secret"], turn_secret=values["turn_secret"],
                   api_key=values["api_key"])


@dataclass(frozen=True)
class Endpoints:
    redis_url: str
    kurento_urls: tuple[str, ...]
    #: TURN servers handed to clients, and the shared secret that signs their credentials.
    turn_urls: tuple[str, ...]
    turn_secrets: tuple[str, ...]
    jwt_secret: str
    api_key_hashes: tuple[str, ...] = ()


async def _tcp_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def _unix_open(path: Path) -> bool:
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"PING\r\n")
        line = await reader.readline()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return line.startswith(b"+PONG")
    return False


def hash_api_key(key: str) -> str:
    """API keys are high-entropy random strings, so a plain SHA-256 is enough at rest."""
    return hashlib.sha256(key.encode()).hexdigest()


def _check_free(port: int, setting: str, *, udp: bool = False, host: str = "127.0.0.1"
                ) -> None:
    """A port taken by another process would answer our readiness probe for a child that
    never started: refuse to start instead, naming the setting."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # As a server binds it: a port that only lingers in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise RuntimeError(f"{setting}: {host}:{port} is in use by another "
                                   f"process ({exc.strerror}); choose another port") from None


def _redis_child(data: Path) -> tuple[ChildSpec, str]:
    folder = data / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port", "0",  # no TCP at all: only our unix socket
        "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(folder), "--appendonly", "yes", "--save", "",
        "--daemonize", "no", "--loglevel", "warning",
    ]
    return ChildSpec(name="redis", argv=argv, probe=lambda: _unix_open(sock)), f"unix://{sock}"


def _media_child(settings: Settings) -> tuple[ChildSpec, str]:
    port = settings.media.embedded_port
    argv = [
        sys.executable, "-m", "telemed.mediaserver", "--host", "127.0.0.1", "--port", str(port),
        "--recordings-root", str(settings.recordings_path),
        "--gc-grace", str(settings.media.embedded_gc_grace),
        *(["--strict-candidates"] if settings.media.embedded_strict_candidates else []),
    ]
    spec = ChildSpec(name="mediaserver", argv=argv, probe=lambda: _tcp_open("127.0.0.1", port))
    return spec, f"ws://127.0.0.1:{port}/kurento"


def host_address() -> str | None:
    """The IPv4 address this host sends from by default, or None when it has only loopback.

    The embedded media server offers candidates on the host's own addresses only (never
    loopback), so a relay on 127.0.0.1 is of no use to a relay-only client: its relay
    candidate is one the hub must drop, and the media server has no loopback candidate."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        # connect() on UDP only chooses the route and source address: nothing is sent.
        probe.connect(("192.0.2.1", 9))
        address = ipaddress.IPv4Address(probe.getsockname()[0])
        if not (address.is_loopback or address.is_unspecified or address.is_link_local):
            return str(address)
    return None


def _turn_relay_lines() -> list[str]:
    relay = host_address()
    if relay is None:
        log.warning("! no non-loopback IPv4 address: the embedded coturn relays on 127.0.0.1, "
                    "which relay-only clients cannot use")
        return ["relay-ip=127.0.0.1"]
    # The relay's only way in past denied-peer-ip is this host's own address, where the
    # embedded media server's candidates are: nothing else on the network becomes a peer.
    return [f"relay-ip={relay}", f"allowed-peer-ip={relay}"]


def _turn_child(settings: Settings, data: Path, secret: str) -> tuple[ChildSpec, str] | None:
    binary = shutil.which("turnserver")
    if binary is None:
        return None
    folder = data / "turn"
    folder.mkdir(parents=True, exist_ok=True)
    port = settings.turn.embedded_port
    # The secret goes into a 0600 file, not argv, where `ps` would show it.
    conf = folder / "turnserver.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "\n".join([
                "listening-ip=127.0.0.1",
                *_turn_relay_lines(),
                f"listening-port={port}",
                "min-port=49160",
                "max-port=49260",
                "use-auth-secret",
                f"static-auth-secret={secret}",
                f"realm={settings.turn.realm}",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-cli",
                "no-multicast-peers",
                "no-software-attribute",
                "stale-nonce=600",
                "no-rfc5780",
                *(f"denied-peer-ip={peers}" for peers in DENIED_PEERS),
                f"userdb={folder}/turndb",
                f"pidfile={folder}/turnserver.pid",
                "log-file=stdout",
                "simple-log",
                "",
            ])
        )
    spec = ChildSpec(name="coturn", argv=[binary, "-c", str(conf)],
                     probe=lambda: _tcp_open("127.0.0.1", port))
    return spec, f"turn:127.0.0.1:{port}"


def plan(settings: Settings) -> tuple[list[ChildSpec], Endpoints]:
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    settings.recordings_path.mkdir(parents=True, exist_ok=True)
    kept = load_secrets(data)
    children: list[ChildSpec] = []
    # Before any child starts, so that nothing is started only to be stopped again.
    if settings.http.port and ":" not in settings.http.host:
        _check_free(settings.http.port, "TELEMED_HTTP_PORT", host=settings.http.host)

    # With takeover, the children outlive a killed or restarted service: the calls their
    # media server carries go on and the next start finds them running.
    state = data / "run" if settings.calls.take_over else None

    def ours_running(name: str) -> bool:
        return state is not None and PidFile(state / f"{name}.pid").running() is not None

    redis_url = settings.redis.url
    if not redis_url:
        spec, redis_url = _redis_child(data)
        children.append(replace(spec, outlives=state))

    kurento_urls = settings.media.kurento_urls
    if not kurento_urls:
        if not ours_running("mediaserver"):
            _check_free(settings.media.embedded_port, "TELEMED_MEDIA_EMBEDDED_PORT")
        spec, url = _media_child(settings)
        children.append(replace(spec, outlives=state))
        kurento_urls = (url,)

    turn_urls = settings.turn.urls
    turn_secrets = settings.turn.secrets
    if settings.turn.provider == "embedded":
        turn_secrets = (kept.turn_secret,)
        if shutil.which("turnserver") is not None and not ours_running("coturn"):
            _check_free(settings.turn.embedded_port, "TELEMED_TURN_EMBEDDED_PORT", udp=True)
        planned = _turn_child(settings, data, kept.turn_secret)
        if planned is not None:
            spec, url = planned
            children.append(replace(spec, outlives=state))
            turn_urls = (f"{url}?transport=udp", f"{url}?transport=tcp")
        else:
            log.warning("! no turnserver binary: calls get no TURN credentials (install "
                        "coturn, or set turn.provider)")
            turn_urls = ()

    endpoints = Endpoints(
        redis_url=redis_url,
        kurento_urls=tuple(kurento_urls),
        turn_urls=tuple(turn_urls),
        turn_secrets=tuple(turn_secrets),
        jwt_secret=settings.auth.jwt_secret or kept.jwt_secret,
        api_key_hashes=settings.auth.api_key_hashes or (hash_api_key(kept.api_key),),
    )
    return children, endpoints
