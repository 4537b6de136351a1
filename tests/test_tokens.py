"""Join tokens: every way a token can be wrong has its own code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling.errors import AuthError
from signaling.tokens import load_public_key, mint_join_token, verify_join_token

KEY = "k" * 32
ARGS = {"issuer": "mis", "audience": "telemed"}


def mint(**kw: object) -> str:
    base: dict[str, object] = {"key": KEY, "subject": "pat-1", "name": "Anna", "role": "patient",
                               "call_id": "call-1", **ARGS}
    base.update(kw)
    return mint_join_token(**base)  # type: ignore[arg-type]


def verify(token: str, **kw: object) -> object:
    base: dict[str, object] = {"keys": [KEY], **ARGS}
    base.update(kw)
    return verify_join_token(token, **base)  # type: ignore[arg-type]


def test_a_good_token_yields_its_claims() -> None:
    """A valid join token yields its subject, name, role and call."""
    claims = verify(mint(), call_id="call-1")
    assert (claims.subject, claims.name, claims.role, claims.call_id) == (  # type: ignore[attr-defined]
        "pat-1", "Anna", "patient", "call-1")


@pytest.mark.parametrize(("token", "kw", "code"), [
    (lambda: mint(key="other" * 8), {}, "auth.invalid"),
    (lambda: mint(now=time.time() - 7200, ttl=60), {}, "auth.expired"),
    (lambda: mint(audience="someone-else"), {}, "auth.audience"),
    (lambda: mint(issuer="intruder"), {}, "auth.invalid"),
    (lambda: mint(), {"call_id": "call-2"}, "auth.wrong_call"),
    (lambda: "not.a.jwt", {}, "auth.invalid"),
    (lambda: "garbage", {}, "auth.invalid"),
    (lambda: jwt.encode({"sub": "x", "aud": "telemed", "iss": "mis", "exp": time.time() + 60,
                         "role": "patient", "call": "call-1"}, None, algorithm="none"),
     {}, "auth.invalid"),
    (lambda: jwt.encode({"sub": "x", "aud": "telemed", "iss": "mis", "exp": time.time() + 60,
                         "role": "admin", "call": "call-1"}, KEY, algorithm="HS256"),
     {}, "auth.invalid"),
])
def test_bad_tokens_are_refused_with_their_code(token: object, kw: dict[str, object],
                                                code: str) -> None:
    """A forged, expired, foreign, unsigned or wrong-role token is refused with its own code."""
    with pytest.raises(AuthError) as info:
        verify(token(), **kw)  # type: ignore[operator]
    assert info.value.code == code


def test_rotated_keys_are_all_accepted() -> None:
    """A token signed with an older key still verifies while that key is listed."""
    old = mint(key="old" * 11)
    assert verify(old, keys=[KEY, "old" * 11])


def forge_hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 JWT built by hand: PyJWT refuses a PEM as an HMAC key, an attacker does not."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + \
        b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def public_pems(public: Any) -> list[bytes]:
    """The forms of the public key an attacker may use as the HMAC secret: the PEM the MIS
    publishes (SubjectPublicKeyInfo), and for RSA the PKCS#1 PEM too."""
    pems = [public.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo)]
    if isinstance(public, rsa.RSAPublicKey):
        pems.append(public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.PKCS1))
    return pems


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_tokens_from_the_mis_verify_with_its_public_key(alg: str) -> None:
    """An RS256/ES256 token verifies with the MIS's public key; an HS256 token signed with
    that public key's PEM as the HMAC secret (algorithm confusion) is refused."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key()
    token = mint(key=pem, algorithm=alg)
    assert verify(token, keys=[public], algorithms=[alg])
    claims = jwt.decode(token, options={"verify_signature": False})
    # The forgery carries the good token's claims: only its algorithm and key are wrong.
    forged_with_key = forge_hs256(claims, KEY.encode())
    assert verify(forged_with_key, keys=[KEY])  # well formed: a real secret makes it pass
    for public_pem in public_pems(public):
        forged = forge_hs256(claims, public_pem)
        # Refused by our pinning (a public key verifies only its own algorithm), not merely
        # by PyJWT's own refusal of a PEM as an HMAC key; with a secret listed too, the
        # HMAC is checked against the secret alone and fails.
        for keys, algorithms, why in (([public], [alg], "not accepted"),
                                      ([public], None, "not accepted"),
                                      ([KEY, public], None, "bad signature")):
            with pytest.raises(AuthError) as info:
                verify(forged, keys=keys, algorithms=algorithms)
            assert (info.value.code, why in info.value.message) == ("auth.invalid", True), \
                (keys, info.value.message)


def _keypairs() -> dict[str, tuple[bytes, object]]:
    pairs: dict[str, tuple[bytes, object]] = {}
    for alg, private in (("RS256", rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048)),
                         ("ES256", ec.generate_private_key(ec.SECP256R1()))):
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        pairs[alg] = (pem, load_public_key(public_pem))
    return pairs


def test_each_key_verifies_its_own_algorithm_without_being_told() -> None:
    """Each key verifies its own algorithm unasked; an RS256 token fails where only a secret is."""
    pairs = _keypairs()
    keys = [KEY, *(public for _, public in pairs.values())]
    assert verify(mint(), keys=keys)
    for alg, (private_pem, _) in pairs.items():
        assert verify(mint(key=private_pem, algorithm=alg), keys=keys)
    with pytest.raises(AuthError) as info:  # an RS256 token where only a secret is known
        verify(mint(key=pairs["RS256"][0], algorithm="RS256"), keys=[KEY])
    assert info.value.code == "auth.invalid" and "not accepted" in info.value.message


@pytest.mark.parametrize("claims", [
    {"exp": None}, {"exp": "soon"}, {"exp": [1]}, {"exp": 1e400},
], ids=["no-exp", "text-exp", "list-exp", "infinite-exp"])
@pytest.mark.parametrize("now", [None, 1000.0], ids=["clock", "given-now"])
def test_a_token_without_a_usable_expiry_is_refused(claims: dict[str, object],
                                                    now: float | None) -> None:
    """`exp` is required and must be a number, whichever clock judges it."""
    body: dict[str, object] = {"sub": "x", "aud": "telemed", "iss": "mis", "role": "patient",
                               "call": "call-1", "name": "A", **claims}
    if body["exp"] is None:
        del body["exp"]
    with pytest.raises(AuthError) as info:
        verify(jwt.encode(body, KEY, algorithm="HS256"), now=now)
    assert info.value.code == "auth.invalid"
