"""resiprocate reTurn: a fixed pool of accounts in its users file.

reTurn reads `login:password:realm:state` lines (state `authorized` or `refused`; with
`UserDatabaseHashedPasswords = true` the password field holds hex MD5(login:realm:pw)) and
reloads the file on SIGHUP or every `UserDatabaseCheckInterval` seconds. A lease marks a
free account `authorized`; returning it marks it `refused` with a fresh password, so the
old credentials are dead after the next reload. The file is rewritten atomically (write to
a temporary file, fsync, rename), so reTurn never reads half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from turn.lease import TurnExhausted, TurnLease

__all__ = ["Account", "ReturnUsersFile", "format_line", "parse_line"]

STATES = ("authorized", "refused")


@dataclass
class Account:
    login: str
    password: str  # clear text: handed to the browser; only the file holds the hash
    realm: str
    state: str = "refused"
    holder: str = ""  # "<call>/<participant>" while leased


def _hash(login: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{login}:{realm}:{password}".encode()).hexdigest()


def format_line(account: Account, *, hashed: bool) -> str:
    secret = _hash(account.login, account.realm, account.password) if hashed \
        else account.password
    return f"{account.login}:{secret}:{account.realm}:{account.state}"


def parse_line(line: str) -> tuple[str, str, str, str]:
    parts = line.strip().split(":")
    if len(parts) != 4 or parts[3] not in STATES or not all(parts[:3]):
        raise ValueError(f"not a reTurn users line: {line!r}")
    return parts[0], parts[1], parts[2], parts[3]


class ReturnUsersFile:
    """The account pool and its users file. State lives here, in one process: reTurn has
    one users file per server, so one signalling node owns it."""

    def __init__(self, path: Path, realm: str, urls: tuple[str, ...], *, size: int = 0,
                 hashed: bool = True, pid_file: Path | None = None) -> None:
        self.path = path
        self.realm = realm
        self.urls = urls
        self.hashed = hashed
        self.pid_file = pid_file
        self.accounts = [Account(f"tm{i:04d}", secrets.token_urlsafe(18), realm)
                         for i in range(size)]
        self._lock = asyncio.Lock()

    async def issue(self, call_id: str, participant: str, ttl: float, now: float,
                    slot: int) -> TurnLease:
        """The pool's slot n is account n: the pool (in Redis) decided who gets which."""
        async with self._lock:
            if not 0 <= slot < len(self.accounts):
                raise TurnExhausted(f"slot {slot} is beyond the {len(self.accounts)} accounts")
            free = self.accounts[slot]
            free.holder, free.state = f"{call_id}/{participant}", "authorized"
            self.write()
        return TurnLease(call_id, participant, free.login, free.password, self.urls, now + ttl,
                         {"account": free.login})

    async def revoke(self, lease: TurnLease) -> None:
        async with self._lock:
            for account in self.accounts:
                if account.login == lease.username and account.holder:
                    account.holder, account.state = "", "refused"
                    account.password = secrets.token_urlsafe(18)
            self.write()

    def write(self) -> None:
        text = "".join(format_line(a, hashed=self.hashed) + "\n" for a in self.accounts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".users-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._reload()

    def _reload(self) -> None:
        if self.pid_file is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGHUP)
