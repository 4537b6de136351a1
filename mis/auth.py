"""Who may call the REST API: `Authorization: Bearer <credential>` holding an API key,
compared in constant time against the SHA-256 hashes in the settings, or a short-lived JWT
the MIS signs with its shared secret for audience `telemed-api`, each usable once."""

from __future__ import annotations

import hashlib
import hmac
import math

import jwt
import redis.asyncio as aioredis

__all__ = ["API_AUDIENCE", "API_JWT_LIFETIME", "JWT_LEEWAY", "authenticate"]

#: `aud` of the JWTs the MIS signs to call the API; join tokens carry another one, so
#: neither kind of token can stand in for the other.
API_AUDIENCE = "telemed-api"
#: Longest `exp - iat` accepted for an API JWT: a leaked one is useless soon.
API_JWT_LIFETIME = 300
JWT_LEEWAY = 5


async def authenticate(header: str, *, key_hashes: tuple[str, ...], jwt_secret: str,
                       jwt_issuer: str, redis: aioredis.Redis) -> tuple[str | None, str]:
    """(None, who) when the credential is good, else (why not, ""); `why` is for the
    log and never holds the secret; `who` names the credential for its rate limit."""
    if not header.startswith("Bearer "):
        return "no bearer credential", ""
    credential = header[7:].strip()
    if credential.count(".") == 2:
        return await _jwt_problem(credential, jwt_secret, jwt_issuer, redis), "jwt"
    digest = hashlib.sha256(credential.encode()).hexdigest()
    # Compare against every key so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(digest, h) for h in key_hashes]
    return (None, "key:" + digest) if any(matches) else ("unknown API key", "")


async def _jwt_problem(token: str, secret: str, issuer: str, redis: aioredis.Redis
                       ) -> str | None:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], audience=API_AUDIENCE, issuer=issuer,
            leeway=JWT_LEEWAY, options={"require": ["exp", "iat", "jti", "iss", "aud"]})
    except jwt.PyJWTError as exc:
        return f"JWT refused: {type(exc).__name__}"
    if not isinstance(claims["jti"], str) or not 0 < len(claims["jti"]) <= 200:
        return "JWT refused: bad jti"
    if not all(isinstance(claims[c], int | float) and not isinstance(claims[c], bool)
               and math.isfinite(claims[c]) for c in ("exp", "iat")):
        return "JWT refused: exp and iat must be numbers"
    if int(claims["exp"]) - int(claims["iat"]) > API_JWT_LIFETIME:
        return f"JWT refused: lives longer than {API_JWT_LIFETIME}s"
    slot = "telemed:api:jti:" + hashlib.sha256(claims["jti"].encode()).hexdigest()
    # Remembered until the token expires anyway: a replayed request is refused.
    fresh = await redis.set(slot, 1, nx=True, exat=int(claims["exp"]) + JWT_LEEWAY + 1)
    return None if fresh else "JWT replayed (jti already used)"
