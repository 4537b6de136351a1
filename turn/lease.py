"""`TurnLease` and the provider interface every TURN credential source implements."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["KMS_TURN_URL", "KurentoTurnUrlError", "TurnExhausted", "TurnLease", "TurnProvider",
           "ice_servers_for", "kurento_turn_url"]

#: KMS 7.3's own parser of `turnUrl`, verbatim but for Python's group syntax
#: (kmswebrtcsession.c, kms_webrtc_session_parse_turn_url; KMS-SOURCE-NOTES.md item 2).
#: `user` is greedy: the split falls on the last ':' before the last '@'. The host must be
#: an IPv4 literal, the port is required, the transport lower-case.
KMS_TURN_URL = re.compile(r"^(?P<user>.+):(?P<password>.+)@(?P<address>[0-9.]+):"
                          r"(?P<port>[0-9]+)(\?transport=(?P<transport>(udp|tcp|tls)))?$")


class KurentoTurnUrlError(ValueError):
    """A lease KMS would mis-parse: it fails silently there, TURN left unconfigured."""


class TurnExhausted(Exception):
    """The pool has no credentials left; the join fails with `turn.exhausted`."""


@dataclass(frozen=True)
class TurnLease:
    call_id: str
    participant: str
    username: str
    credential: str
    urls: tuple[str, ...]
    expires: float
    #: Provider-specific handle (the account of a fixed pool, for instance).
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return f"{self.call_id}/{self.participant}"

    def ice_server(self) -> dict[str, Any]:
        """As an RTCIceServer for the browser."""
        return {"urls": list(self.urls), "username": self.username,
                "credential": self.credential}


def ice_servers_for(lease: TurnLease | None) -> list[dict[str, Any]]:
    return [lease.ice_server()] if lease is not None and lease.urls else []


_URL = re.compile(r"^turns?:(?P<host>[^:?]+)(:(?P<port>\d+))?(\?transport=(?P<tr>udp|tcp))?$")


def kurento_turn_url(lease: TurnLease) -> str | None:
    """The lease as Kurento's `turnUrl` (`user:password@<IPv4>:<port>?transport=…`).

    Kurento takes only an IP literal there, so only URLs whose host is an IPv4 address
    count; UDP is preferred, then TCP, then TLS. None when the lease has no such URL.
    Raises `KurentoTurnUrlError` for credentials KMS's parser would split differently (a
    ':' in the password): KMS reports no error for them, TURN just never works, so we
    refuse loudly instead of handing it over.
    """
    choices = []
    for url in lease.urls:
        match = _URL.match(url)
        if match is None:
            continue
        try:
            ipaddress.IPv4Address(match["host"])
        except ValueError:
            continue
        tls = url.startswith("turns:")
        transport = "tls" if tls else (match["tr"] or "udp")
        port = int(match["port"] or (5349 if tls else 3478))
        choices.append((("udp", "tcp", "tls").index(transport), match["host"], port, transport))
    if not choices:
        return None
    _, host, port, transport = min(choices)
    url = f"{lease.username}:{lease.credential}@{host}:{port}?transport={transport}"
    parsed = KMS_TURN_URL.match(url)
    if parsed is None or (parsed["user"], parsed["password"]) != (lease.username,
                                                                  lease.credential):
        raise KurentoTurnUrlError(
            f"Kurento would mis-read the TURN credentials of {lease.key} (user "
            f"{lease.username!r}): its password must not contain ':' (KMS splits user "
            "and password at the last ':' before the address)")
    return url


class TurnProvider(Protocol):
    """Where credentials come from. The pool (turn.pool) bounds and records leases."""

    async def issue(self, call_id: str, participant: str, ttl: float, now: float,
                    slot: int) -> TurnLease:
        """Credentials for the pool's `slot` (0 … size-1), valid for `ttl` seconds."""
        ...

    async def renew(self, lease: TurnLease, ttl: float, now: float) -> TurnLease:
        """The same holder's credentials, valid `ttl` seconds from `now` (new ones where
        the old cannot be extended)."""
        ...

    async def revoke(self, lease: TurnLease) -> None:
        """Makes the credentials open no new allocation (where the server allows it)."""
