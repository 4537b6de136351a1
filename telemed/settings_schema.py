"""The settings tree: one frozen dataclass per section, each field with its documentation,
unit and bounds in its metadata (`setting`). `telemed.settings` reads values into it,
`telemed.settings_doc` writes docs/configuration.md from it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telemed.redis_client import check_url as check_redis_url
from telemed.settings_field import SettingsError, setting

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
    "TurnSettings",
]

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
    time_zone: str = setting(
        "UTC", "The hospital's time zone (IANA name, e.g. Asia/Vladivostok): the workstation"
        " shows appointment times in it and says which calls are today's.",
    )
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

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"http.time_zone: {self.time_zone!r} is not an IANA time zone"
                                " name such as Europe/Moscow or UTC") from None


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
        "Where per-call TURN credentials come from. embedded: a private coturn listening on"
        " loopback and relaying on this host's own address (when the turnserver binary is"
        " present; docs/deployment.md).",
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
