"""coturn: shared-secret credentials (`use-auth-secret`) and its Redis user database."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import redis.asyncio as aioredis

from turn.credentials import shared_secret_credential
from turn.lease import TurnLease

__all__ = ["DENIED_PEERS", "CoturnRedisUserDb", "CoturnSharedSecret", "user_key"]

#: `denied-peer-ip` ranges for every coturn we configure (embedded and compose/): a TURN
#: account must not become a way into the hospital network. coturn before 4.9 lets
#: IPv4-mapped IPv6 peers (::ffff:127.0.0.1) past its other checks, hence the ::ffff range.
DENIED_PEERS = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)


class CoturnSharedSecret:
    """Stateless credentials coturn verifies with its `static-auth-secret` list.

    Several secrets rotate: the first signs; coturn (4.5+) accepts any secret given by a
    repeated `static-auth-secret` line. Rotating = add the new one first on coturn, then
    here, and drop the old one from both after the longest lease TTL. Revocation is not
    possible: credentials stay valid for new allocations until they expire.
    """

    def __init__(self, secrets_: tuple[str, ...], urls: tuple[str, ...]) -> None:
        if not secrets_:
            raise ValueError("coturn shared-secret TURN needs at least one secret")
        self.secrets = secrets_
        self.urls = urls

    async def issue(self, call_id: str, participant: str, ttl: float, now: float,
                    slot: int) -> TurnLease:
        cred = shared_secret_credential(self.secrets[0], call_id=call_id,
                                        participant=participant, now=now, ttl=ttl)
        return TurnLease(call_id, participant, cred.username, cred.password, self.urls,
                         cred.expires)

    async def renew(self, lease: TurnLease, ttl: float, now: float) -> TurnLease:
        # The expiry is inside the signed username: a later one needs new credentials.
        return await self.issue(lease.call_id, lease.participant, ttl, now, 0)

    async def revoke(self, lease: TurnLease) -> None:
        return None  # nothing to do: they expire on their own


def user_key(realm: str, name: str, password: str) -> str:
    """coturn's long-term credential key: hex MD5(name:realm:password)."""
    return hashlib.md5(f"{name}:{realm}:{password}".encode()).hexdigest()


class CoturnRedisUserDb:
    """One user per lease in coturn's Redis user DB, expiring with the lease and deleted
    when it is returned, so a revoked credential opens no new allocation."""

    def __init__(self, redis: aioredis.Redis, realm: str, urls: tuple[str, ...]) -> None:
        self.redis = redis
        self.realm = realm
        self.urls = urls

    def _key(self, name: str) -> str:
        return f"turn/realm/{self.realm}/user/{name}/key"

    async def issue(self, call_id: str, participant: str, ttl: float, now: float,
                    slot: int) -> TurnLease:
        name = f"tm-{secrets.token_hex(8)}"
        password = secrets.token_urlsafe(18)
        await self.redis.set(self._key(name), user_key(self.realm, name, password),
                             ex=max(1, int(ttl)))
        return TurnLease(call_id, participant, name, password, self.urls, now + ttl)

    async def renew(self, lease: TurnLease, ttl: float, now: float) -> TurnLease:
        if not await self.redis.expire(self._key(lease.username), max(1, int(ttl))):
            # The user expired already (a long outage): make a new one rather than fail.
            return await self.issue(lease.call_id, lease.participant, ttl, now, 0)
        return dataclasses.replace(lease, expires=now + ttl)

    async def revoke(self, lease: TurnLease) -> None:
        await self.redis.delete(self._key(lease.username))
