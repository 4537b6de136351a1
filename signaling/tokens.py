"""Join tokens: JWTs the MIS (or our API) signs; one token opens exactly one call."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling.errors import AuthError

__all__ = ["JoinClaims", "Role", "algorithm_for", "load_public_key", "mint_join_token",
           "verify_join_token"]

Role = Literal["patient", "doctor", "consultant"]
ROLES = ("patient", "doctor", "consultant")
LEEWAY = 5.0  # seconds of clock skew tolerated between the MIS and us


@dataclass(frozen=True)
class JoinClaims:
    subject: str
    name: str
    role: Role
    call_id: str
    expires: int


def mint_join_token(*, key: str, issuer: str, audience: str, subject: str, name: str,
                    role: Role, call_id: str, ttl: float = 3600.0,
                    now: float | None = None, algorithm: str = "HS256") -> str:
    issued = int(now if now is not None else time.time())
    payload = {"iss": issuer, "aud": audience, "sub": subject, "name": name, "role": role,
               "call": call_id, "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(payload, key, algorithm=algorithm)


def algorithm_for(key: Any) -> str:
    """The one algorithm a key verifies: a shared secret HS256, an RSA public key RS256, an
    EC public key ES256. One per key, so a public key can never be used as an HMAC secret."""
    if isinstance(key, (str, bytes)):
        return "HS256"
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    raise TypeError(f"unsupported join-token key {type(key).__name__}")


def load_public_key(pem: str | bytes) -> Any:
    """The MIS's public key (RS256 or ES256) from PEM text."""
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    algorithm_for(key)  # refuses key types we do not verify with
    return key


def verify_join_token(token: str, *, keys: Sequence[Any], issuer: str, audience: str,
                      call_id: str | None = None, algorithms: Sequence[str] | None = None,
                      now: float | None = None) -> JoinClaims:
    """Checks signature, expiry, issuer, audience and (if given) the call id.

    Each key verifies only its own algorithm (`algorithm_for`); `algorithms` narrows that.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        raise AuthError("not a JWT", code="auth.invalid")
    try:
        alg = str(jwt.get_unverified_header(token).get("alg"))
    except jwt.PyJWTError:
        raise AuthError("invalid token header", code="auth.invalid") from None
    candidates = [k for k in keys if algorithm_for(k) == alg
                  and (algorithms is None or alg in algorithms)]
    if not candidates:
        raise AuthError(f"tokens signed with {alg[:10]!r} are not accepted",
                        code="auth.invalid")
    last: Exception | None = None
    for key in candidates:
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=issuer,
                leeway=LEEWAY, options={"require": ["exp", "sub", "aud", "iss"],
                                        "verify_exp": now is None},
            )
            break
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", code="auth.expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token is for another audience", code="auth.audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token from an unknown issuer", code="auth.invalid") from None
        except jwt.InvalidSignatureError as exc:
            last = exc  # try the next key (rotation)
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}", code="auth.invalid") from None
    else:
        raise AuthError("bad signature", code="auth.invalid") from last
    exp = claims["exp"]
    # PyJWT checks the type of `exp` only when it checks the expiry itself.
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise AuthError("token has no usable expiry", code="auth.invalid")
    if now is not None and int(exp) + LEEWAY < now:
        raise AuthError("token expired", code="auth.expired")
    role, call, name = claims.get("role"), claims.get("call"), claims.get("name", "")
    if role not in ROLES or not isinstance(call, str) or not call or not isinstance(name, str):
        raise AuthError("token lacks role, call or name", code="auth.invalid")
    if call_id is not None and call != call_id:
        raise AuthError("token is for another call", code="auth.wrong_call")
    return JoinClaims(subject=str(claims["sub"]), name=name, role=role, call_id=call,
                      expires=int(claims["exp"]))
