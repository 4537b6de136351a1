"""One frozen settings tree, read from an optional TOML file and `TELEMED_*` variables.

Every field carries its documentation, unit and bounds in its metadata; `docs/configuration.md`
is generated from them (`python -m telemed.settings --markdown`) and a test keeps it current.
Environment names are `TELEMED_<SECTION>_<FIELD>` (top-level fields: `TELEMED_<FIELD>`);
lists are comma-separated. The environment wins over the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mis.clients import parse_networks
from mis.webhooks import parse_endpoint
from signaling.tokens import load_public_key
from telemed.redis_client import check_url as check_redis_url
from web.security import check_origin

__all__ = [
    "AuthSettings",
    "CallSettings",
    "HttpSettings",
    "LogSettings",
    "MediaSettings",
    "NodeSettings",
    "RecordingSettings",
    "RedisSettings",
    "Settings",
    "SettingsError",
    "TurnSettings",
    "load_settings",
]

ENV_PREFIX = "TELEMED_"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting."""


def setting(
    default: Any,
    doc: str,
    *,
    unit: str = "",
    min: float | None = None,
    max: float | None = None,
    secret: bool = False,
) -> Any:
    meta = {"doc": doc, "unit": unit, "min": min, "max": max, "secret": secret}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for list defaults")
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    host: str = setting("127.0.0.1", "Address the HTTP and WebSocket server binds to.")
    port: int = setting(8080, "TCP port of the HTTP and WebSocket server.", min=0, max=65535)
    public_url: str = setting(
        "", "Base URL users reach the service at, used in join links. Empty: http://host:port."
    )
    allowed_origins: tuple[str, ...] = setting(
        (), "WebSocket Origins accepted. Empty: the origin of public_url only."
    )
    frame_ancestors: tuple[str, ...] = setting(
        (), "Origins (scheme://host[:port]) allowed to embed the pages in an iframe, e.g. the"
        " MIS's patient cabinet; they also receive the embedded page's postMessage events."
        " Empty: no site may frame the pages (docs/web.md, Embedding)."
    )
    max_frame_bytes: int = setting(
        65536, "Largest WebSocket frame accepted from a client.", unit="bytes", min=1024
    )
    demo: bool = setting(
        True,
        "Offer a 'start a test call' button on the start page. Only ever served when the"
        " service binds to a loopback address.",
    )
    language: Literal["ru", "en"] = setting("ru", "Default language of the pages.")
    trusted_proxies: tuple[str, ...] = setting(
        (), "Addresses or CIDR blocks of reverse proxies (compose's nginx) whose"
        " X-Forwarded-For names the client. From anyone else it is ignored. The API's rate"
        " limits and failed-authentication counters are keyed on that client address.",
    )
    api_rate: int = setting(
        1200, "REST API requests per minute one credential (an API key, or the MIS's JWTs)"
        " may make, all signalling nodes together; more get 429 rate.limited.", unit="1/min",
        min=1,
    )
    ws_heartbeat: float = setting(
        15.0, "WebSocket ping interval; a client that misses a pong for this long is dropped "
        "(and may rejoin within calls.rejoin_grace).", unit="s", min=0.5,
    )
    ws_rate: float = setting(
        50.0, "Messages a client may send per second, sustained; more get rate.limited.",
        unit="1/s", min=1,
    )
    ws_burst: float = setting(
        100.0, "Messages a client may send at once above ws_rate.", min=1,
    )


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    url: str = setting(
        "",
        "Redis URL (redis://, rediss:// or unix://), or a primary watched by Redis Sentinel:"
        " `redis+sentinel://[:password@]host1:port1,host2:port2/<service_name>[/db]`"
        " (sentinel port 26379 when left out; `?sentinel_password=...` when the sentinels"
        " ask for one; docs/deployment.md, Redis Sentinel). Empty: start a private"
        " redis-server under the data folder.",
    )
    timeout: float = setting(
        2.0, "Longest wait for one Redis command or connection. Past it the command fails:"
        " the REST API answers 503 service.unavailable with Retry-After instead of hanging,"
        " and background writers retry.", unit="s", min=0.05, max=60.0,
    )
    failover_wait: float = setting(
        10.0, "redis+sentinel:// only: how long a command that finds no primary (gone,"
        " unreachable or demoted to replica) keeps trying again, asking the sentinels"
        " where the primary is now, before it fails. Cover the sentinels'"
        " down-after-milliseconds plus the election (compose: 3 s + about 1 s): then a"
        " failover costs requests a pause, not errors.", unit="s", min=0.0, max=300.0,
    )

    def __post_init__(self) -> None:
        try:
            check_redis_url(self.url)
        except ValueError as exc:
            raise SettingsError(f"redis.url: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    id: str = setting(
        "", "This signalling node's name, written into the `telemed.node` tag of every media "
        "object it creates (who made an orphan). Stable across restarts; unique per node "
        "when several share a Redis. Empty: the host name and http.port, host:port.",
    )
    heartbeat_ttl: float = setting(
        3.0, "A node refreshes its liveness key in Redis every third of this; a node not "
        "heard of for this long is gone, and another node adopts its calls (within a third "
        "of this more). A node that went this long without a refresh (frozen) acts on no "
        "call until it knows which are still its.", unit="s", min=0.3,
    )


@dataclass(frozen=True, kw_only=True)
class MediaSettings:
    kurento_urls: tuple[str, ...] = setting(
        (), "Kurento media server WebSocket URLs. Empty: start the embedded media server."
    )
    embedded_port: int = setting(
        8888, "Loopback port of the embedded media server.", min=0, max=65535
    )
    health_interval: float = setting(
        2.0, "How often each media server is pinged.", unit="s", min=0.05,
    )
    sockets_per_server: int = setting(
        2, "WebSocket connections per media server that carry calls (pipelines spread over "
        "them); health probes use one more of their own.", min=1, max=16,
    )
    down_after: float = setting(
        3.0, "A media server whose socket is gone this long is down: its calls fail with "
        "media-server-lost.", unit="s", min=0.05,
    )
    embedded_gc_grace: float = setting(
        240.0, "Embedded media server: period of its garbage collector, as Kurento's "
        "garbageCollectorPeriod. Objects no live session owns any more (their owners' sockets "
        "closed without reconnecting) are released 0.75 to 2 periods after the last owner "
        "went (180-480 s by default). A session that touched an object co-owns it, and "
        "ServerManager.getPipelines makes an internal session co-own everything: each orphan "
        "sweep delays collection by that window again.",
        unit="s", min=0.1,
    )
    sweep_interval: float = setting(
        600.0, "How often this node looks on every media server for pipelines of calls that "
        "are finished in Redis (their signalling process died) and releases them, recorders "
        "finalized; also once at start-up. An orphan is released at most this long after "
        "its call is finished, or after sweep_grace if it is younger. Keep it above 480 s "
        "on a Kurento shared with other applications: each sweep pauses Kurento's own "
        "collector for 3 to 8 minutes.", unit="s", min=0.05,
    )
    sweep_grace: float = setting(
        60.0, "The orphan sweep leaves pipelines younger than this alone, whatever Redis "
        "says: a call being set up may not be in Redis yet. Pipelines of calls unfinished "
        "in Redis (any node's, booked or being taken over) are never released.",
        unit="s", min=0.0,
    )
    embedded_strict_candidates: bool = setting(
        False, "Embedded media server: refuse `.local` and link-local candidates as Kurento "
        "does (they never reach it past the hub's filter; tests turn this on).",
    )


@dataclass(frozen=True, kw_only=True)
class TurnSettings:
    provider: Literal["embedded", "coturn-secret", "coturn-redis", "return", "none"] = setting(
        "embedded",
        "Where per-call TURN credentials come from. embedded: a private coturn on loopback"
        " (when the turnserver binary is present).",
    )
    urls: tuple[str, ...] = setting(
        (), "TURN URLs handed to clients, all with the same credentials: UDP and TCP on the "
        "TURN port and TLS on 443 for networks that allow nothing else "
        "(`turn:10.1.2.3:3478?transport=udp, turn:10.1.2.3:3478?transport=tcp, "
        "turns:turn.hospital.local:443?transport=tcp`). Required unless provider is "
        "embedded or none.",
    )
    secrets: tuple[str, ...] = setting(
        (),
        "coturn-secret: coturn's static-auth-secret values, newest first; the first signs "
        "new credentials. To rotate, give coturn the new one as well, then put it first "
        "here; drop the old one from both once lease_ttl has passed.",
        secret=True,
    )
    realm: str = setting("telemed.local", "TURN realm.")
    embedded_port: int = setting(
        3478, "Listening port of the embedded coturn.", min=0, max=65535
    )
    pool_size: int = setting(
        1000, "Most TURN leases out at once, across all signalling nodes; a join beyond it "
        "fails with turn.exhausted. For reTurn, the number of accounts in the users file.",
        min=1,
    )
    lease_ttl: float = setting(
        14400.0, "Lifetime of one participant's TURN credentials and pool slot: covers a "
        "call plus a margin. The node holding a lease renews it once half of this is left, "
        "so longer calls keep theirs; leases of a crashed node return after it.",
        unit="s", min=1.0,
    )
    redis_url: str = setting(
        "", "coturn-redis: the Redis coturn reads its user DB from (its redis-userdb). "
        "Empty: the service's own Redis.",
    )
    users_file: str = setting(
        "", "return: path of reTurn's users file (UserDatabaseFile). Empty: "
        "<data_dir>/turn/users.txt.",
    )
    return_pid_file: str = setting(
        "", "return: reTurn's pid file; it gets SIGHUP to reload the users file. Empty: rely "
        "on its UserDatabaseCheckInterval.",
    )
    return_hashed: bool = setting(
        True, "return: write MD5(user:realm:password) (UserDatabaseHashedPasswords = true).",
    )


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    jwt_secret: str = setting(
        "",
        "Shared secret (HS256) the MIS signs join tokens with. Empty: one is generated and"
        " kept in the data folder.",
        secret=True,
    )
    jwt_public_keys: tuple[str, ...] = setting(
        (),
        "Files with PEM public keys (RSA: RS256, EC: ES256) the MIS may sign join tokens with"
        " instead of the shared secret (several, for rotation).",
    )
    jwt_issuer: str = setting("mis", "Expected `iss` of join tokens.")
    jwt_audience: str = setting("telemed", "Expected `aud` of join tokens.")
    api_key_hashes: tuple[str, ...] = setting(
        (),
        "SHA-256 (hex) of each MIS API key accepted on /api/v1 (several, for rotation)."
        " `telemed api-key` makes a key and its hash. Empty: one key is generated and kept"
        " in the data folder.",
    )
    token_ttl: float = setting(
        86400.0, "Lifetime of join tokens the API mints.", unit="s", min=60
    )


@dataclass(frozen=True, kw_only=True)
class CallSettings:
    watchdog_timeout: float = setting(
        10.0, "A call whose media has not flowed both ways by then fails with no-media.",
        unit="s", min=0.01,
    )
    max_conference_size: int = setting(8, "Most participants in a conference.", min=2)
    ring_timeout: float = setting(
        30.0, "A referral not answered by then fails with ring-timeout.", unit="s", min=0.01,
    )
    take_over: bool = setting(
        True, "At start-up, adopt the calls a previous run of this service left connecting "
        "or live (their media runs on in the media server) instead of failing them; the "
        "participants have the rejoin grace to come back.",
    )
    rejoin_grace: float = setting(
        20.0, "A participant whose connection dropped may rejoin within this time and keep "
        "its place; after it, it has left.", unit="s", min=0.0,
    )
    media_loss_report: float = setting(
        5.0, "Media that stops mid-call for this long is reported (event and webhook); "
        "the call goes on.", unit="s", min=0.01,
    )
    schedule_overrun: float = setting(
        3600.0, "A scheduled call nobody joined expires this long after its window ends "
        "(its links stay valid until then).", unit="s", min=0.0,
    )
    idle_expiry: float = setting(
        14400.0, "An unscheduled call nobody joined expires this long after it was created.",
        unit="s", min=1.0,
    )
    expiry_interval: float = setting(
        60.0, "How often one node looks for booked calls to expire.", unit="s", min=0.01,
    )


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    endpoints: tuple[str, ...] = setting(
        (), "Where events are POSTed. Each entry is a URL, optionally followed by the events "
        "it wants separated by spaces (`call.*` patterns work): "
        "`https://mis/hook call.live call.failed`. Empty: no webhooks.",
    )
    secret: str = setting(
        "", "HMAC-SHA256 key that signs every delivery. Required when endpoints are set.",
        secret=True,
    )
    timeout: float = setting(10.0, "Time a receiver has to answer one delivery.", unit="s",
                             min=0.1)
    retry_base: float = setting(1.0, "First retry delay; it doubles per failure.", unit="s",
                                min=0.01)
    retry_cap: float = setting(300.0, "Longest delay between retries.", unit="s", min=0.01)
    claim_timeout: float = setting(
        60.0, "A delivery claimed by a process that then died is retried after this.",
        unit="s", min=0.1,
    )


@dataclass(frozen=True, kw_only=True)
class RecordingSettings:
    dir: str = setting("", "Folder recordings are written to. Empty: <data_dir>/recordings.")
    compose: bool = setting(
        True, "Make one consultation file per call (participants side by side, audio mixed) "
        "with ffmpeg after it ends.",
    )
    workers: int = setting(1, "Calls finalized and composed at once.", min=1, max=16)
    queue_size: int = setting(100, "Calls waiting to be finalized; more are refused loudly "
                              "and picked up by the next start-up scan.", min=1)
    retention_days: float = setting(
        0.0, "Delete recordings older than this (0: keep for ever). Metadata keeps the "
        "deletion.", unit="days", min=0.0,
    )
    drain_timeout: float = setting(
        30.0, "At shutdown, time given to recordings being finalized; the rest is finished "
        "by the next start-up.", unit="s", min=0.0,
    )
    min_free_bytes: int = setting(
        1024 ** 3, "New calls are refused (recording.disk_full) when the recordings volume "
        "has less free space than this.", unit="bytes", min=0,
    )


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "Log level.")
    format: Literal["kv", "json"] = setting("kv", "key=value lines or JSON lines.")


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: str = setting("var", "Folder for state of embedded services, secrets and recordings.")
    http: HttpSettings = field(default_factory=HttpSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    calls: CallSettings = field(default_factory=CallSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    recordings: RecordingSettings = field(default_factory=RecordingSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def turn_users_file(self) -> Path:
        """Where reTurn's users file is (`turn.users_file`, or under the data folder)."""
        configured = self.turn.users_file
        return Path(configured) if configured else self.data_path / "turn" / "users.txt"

    @property
    def node_id(self) -> str:
        """`node.id`, or host:port: the same after a restart, different for two nodes on
        one host (not the pid, which a restart changes)."""
        return self.node.id or f"{socket.gethostname()}:{self.http.port}"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def recordings_path(self) -> Path:
        return Path(self.recordings.dir).resolve() if self.recordings.dir else (
            self.data_path / "recordings"
        )

    @property
    def public_url(self) -> str:
        if self.http.public_url:
            return self.http.public_url.rstrip("/")
        host = self.http.host if self.http.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.http.port}"


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Settings)
        if dataclasses.is_dataclass(hints[f.name])
    }


def env_name(section: str | None, name: str) -> str:
    return ENV_PREFIX + (f"{section}_{name}" if section else name).upper()


def _convert(label: str, tp: Any, raw: Any, meta: Mapping[str, Any]) -> Any:
    """Coerce `raw` (a string from the environment, or a TOML value) to `tp`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise SettingsError(f"{label}: expected one of {', '.join(choices)}, got {raw!r}")
        return raw
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(raw, str):
            items: list[Any] = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, list):
            items = raw
        else:
            raise SettingsError(f"{label}: expected a list, got {raw!r}")
        return tuple(_convert(label, item_tp, item, {}) for item in items)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{label}: optional settings are expressed with empty defaults")
    value: Any
    if tp is bool:
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            value = True
        elif isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
            value = False
        else:
            raise SettingsError(f"{label}: expected true or false, got {raw!r}")
        return value
    if tp is int:
        if isinstance(raw, bool):
            raise SettingsError(f"{label}: expected an integer, got {raw!r}")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{label}: expected an integer, got {raw!r}") from None
    elif tp is float:
        if isinstance(raw, bool):
            raise SettingsError(f"{label}: expected a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{label}: expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{label}: expected a finite number, got {raw!r}")
    elif tp is str:
        if not isinstance(raw, str):
            raise SettingsError(f"{label}: expected a string, got {raw!r}")
        value = raw
    else:
        raise TypeError(f"{label}: unsupported setting type {tp!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise SettingsError(f"{label}: must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise SettingsError(f"{label}: must be at most {hi}, got {value}")
    return value


def _build(cls: type, section: str | None, file_values: Mapping[str, Any],
           env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in file_values:
        if key not in known:
            where = f"[{section}]" if section else "top level"
            raise SettingsError(f"config file: unknown setting {key!r} in {where}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = file_values.get(f.name, {})
            if not isinstance(sub, Mapping):
                raise SettingsError(f"config file: [{f.name}] must be a table")
            kwargs[f.name] = _build(tp, f.name, sub, env)  # type: ignore[arg-type]
            continue
        name = env_name(section, f.name)
        if name in env:
            kwargs[f.name] = _convert(name, tp, env[name], f.metadata)
        elif f.name in file_values:
            label = f"{section}.{f.name}" if section else f.name
            kwargs[f.name] = _convert(label, tp, file_values[f.name], f.metadata)
    return cls(**kwargs)


def _check_env(env: Mapping[str, str]) -> None:
    """An unknown TELEMED_ variable is almost always a typo: refuse it."""
    valid = {env_name(None, f.name) for f in dataclasses.fields(Settings)
             if f.name not in _sections()}
    valid.add(ENV_PREFIX + "CONFIG")
    for section, cls in _sections().items():
        valid.update(env_name(section, f.name) for f in dataclasses.fields(cls))
    for key in env:
        if key.startswith(ENV_PREFIX) and key not in valid and not key.startswith(
            ENV_PREFIX + "TEST_"
        ):
            raise SettingsError(f"{key}: unknown setting")


def load_settings(
    env: Mapping[str, str] | None = None, config_file: str | os.PathLike[str] | None = None
) -> Settings:
    """Settings from `config_file` (or `$TELEMED_CONFIG`) overlaid with the environment."""
    env = os.environ if env is None else env
    _check_env(env)
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{ENV_PREFIX}CONFIG: {path} is not valid TOML: {exc}") from None
    settings: Settings = _build(Settings, None, values, env)
    _check_together(settings)
    return settings


_TURN_URL = re.compile(
    r"^(?P<scheme>turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:(?P<port>\d{1,5}))?"
    r"(\?transport=(?P<transport>udp|tcp))?$")


def check_turn_url(url: str) -> None:
    """An RTCIceServer TURN URL (RFC 7065) a browser accepts, or ValueError."""
    match = _TURN_URL.match(url)
    if match is None:
        raise ValueError(f"{url!r} is not turn:host[:port][?transport=udp|tcp] or turns:…")
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{url!r}: port out of range")
    if match["scheme"] == "turns" and match["transport"] == "udp":
        raise ValueError(f"{url!r}: turns: runs over TCP (TLS), not UDP")


def read_public_key(path: str) -> Any:
    """The PEM public key in `path`, as the token verifier takes it."""
    try:
        return load_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise OSError(exc.strerror or str(exc)) from None


def _check_together(settings: Settings) -> None:
    """Rules that span settings."""
    turn = settings.turn
    for url in turn.urls:
        try:
            check_turn_url(url)
        except ValueError as exc:
            raise SettingsError(f"turn.urls: {exc}") from None
    if turn.provider in ("coturn-secret", "coturn-redis", "return") and not turn.urls:
        raise SettingsError(f"turn.urls: required when turn.provider is {turn.provider}")
    if turn.provider == "coturn-secret" and not turn.secrets:
        raise SettingsError("turn.secrets: required when turn.provider is coturn-secret")
    for path in settings.auth.jwt_public_keys:
        try:
            read_public_key(path)
        except (OSError, ValueError, TypeError) as exc:
            raise SettingsError(f"auth.jwt_public_keys: {path}: {exc}") from None
    try:
        parse_networks(settings.http.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(f"http.trusted_proxies: {exc}") from None
    for origin in settings.http.frame_ancestors:
        try:
            check_origin(origin)
        except ValueError as exc:
            raise SettingsError(f"http.frame_ancestors: {exc}") from None
    hooks = settings.webhooks
    if hooks.endpoints and not hooks.secret:
        raise SettingsError("webhooks.secret: required when webhooks.endpoints is set")
    for entry in hooks.endpoints:
        try:
            parse_endpoint(entry)
        except ValueError as exc:
            raise SettingsError(f"webhooks.endpoints: {exc}") from None


def describe(settings: Settings) -> dict[str, Any]:
    """Settings as a dict with secrets masked, for logs and diagnostics."""
    def walk(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = walk(value)
            elif f.metadata.get("secret") and value:
                out[f.name] = "***"
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
    return walk(settings)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{c}`" for c in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def markdown() -> str:
    """The configuration reference, docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m telemed.settings --markdown`; a test keeps it current. -->",
        "",
        "Settings come from an optional TOML file (path in `TELEMED_CONFIG`, sections as below)",
        "and from environment variables, which win. List values in the environment are",
        "comma-separated. An unknown `TELEMED_*` variable, an unknown key in the file or a bad",
        "value stops start-up with a message naming the setting.",
        "",
    ]

    def table(cls: type, section: str | None) -> None:
        hints = typing.get_type_hints(cls)
        lines.append("| variable | TOML | type | default | meaning |")
        lines.append("|---|---|---|---|---|")
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                continue
            default = f.default
            shown = ", ".join(default) if isinstance(default, tuple) else default
            shown = "(empty)" if shown in ("", ()) else f"`{shown}`"
            unit = f" ({f.metadata['unit']})" if f.metadata.get("unit") else ""
            secret = " Secret: never logged." if f.metadata.get("secret") else ""
            key = f"{section}.{f.name}" if section else f.name
            lines.append(
                f"| `{env_name(section, f.name)}` | `{key}` | {_type_name(tp)}{unit} | {shown} "
                f"| {f.metadata['doc']}{secret} |"
            )
        lines.append("")

    lines.append("## General")
    lines.append("")
    table(Settings, None)
    for section, cls in _sections().items():
        lines.append(f"## [{section}]")
        lines.append("")
        table(cls, section)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        import json

        print(json.dumps(describe(load_settings()), indent=2))
