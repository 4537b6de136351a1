"""TURN credentials, pure functions: coturn's shared-secret scheme (`use-auth-secret`).

Username `<expiry>:<call>:<participant>`; password base64(HMAC-SHA1(secret, username)).
coturn checks the expiry only when an allocation is created; a live allocation keeps
refreshing after it. Every new peer connection (a late subscription in a conference) is a
new allocation, so the expiry covers the call plus a margin, and the pool renews it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = ["TurnCredential", "shared_secret_credential"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str
    expires: int


def shared_secret_credential(secret: str, *, call_id: str, participant: str, now: float,
                             ttl: float = 3600.0) -> TurnCredential:
    expires = int(now + ttl)
    # Colons separate the fields, so none may appear inside them.
    username = f"{expires}:{_SAFE.sub('_', call_id)}:{_SAFE.sub('_', participant)}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode(), expires)
