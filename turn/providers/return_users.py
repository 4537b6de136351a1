"""resiprocate reTurn: a fixed pool of accounts in its users file.

reTurn reads `login:password:realm:state` lines (state `authorized`, `restricted` or
`refused`; with `UserDatabaseHashedPasswords = true` the password field holds hex
MD5(login:realm:pw)) and reloads the file on SIGHUP or every `UserDatabaseCheckInterval`
seconds. `telemed turn-users` writes the pool, every account `refused`. A lease takes
account n for the pool's slot n, gives it a fresh password and marks it `authorized`;
returning it marks it `refused` with another fresh password, so the old credentials are
dead after the next reload.

The file itself is the state, so several signalling nodes on one host can share it: each
change reads the file, edits one line and renames a complete new file over it (reTurn
never reads half a file), under an exclusive lock on a sibling `.lock` file (the users
file's own inode changes with every rename, so it cannot carry the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from turn.lease import TurnExhausted, TurnLease

__all__ = ["Account", "ReturnUsersFile", "format_line", "generate", "parse_line", "read"]

log = logging.getLogger(__name__)

STATES = ("authorized", "restricted", "refused")


@dataclass(frozen=True)
class Account:
    """One line of the users file; `secret` is what the file holds (hash or password)."""

    login: str
    secret: str
    realm: str
    state: str = "refused"


def password_hash(login: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{login}:{realm}:{password}".encode()).hexdigest()


def format_line(account: Account) -> str:
    return f"{account.login}:{account.secret}:{account.realm}:{account.state}"


def parse_line(line: str) -> Account:
    parts = line.strip().split(":")
    if len(parts) != 4 or parts[3] not in STATES or not all(parts[:3]):
        raise ValueError(f"not a reTurn users line: {line!r}")
    return Account(parts[0], parts[1], parts[2], parts[3])


def read(path: Path) -> list[Account]:
    accounts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                accounts.append(parse_line(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return accounts


def _secret(login: str, realm: str, password: str, hashed: bool) -> str:
    return password_hash(login, realm, password) if hashed else password


def _write(path: Path, accounts: list[Account]) -> None:
    """Replaces `path` by rename: readers see the old file or the new one, never a mix."""
    text = "".join(format_line(a) + "\n" for a in accounts)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".users-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fresh_pool(realm: str, count: int, hashed: bool) -> list[Account]:
    logins = [f"tm{i:04d}" for i in range(count)]
    return [Account(login, _secret(login, realm, secrets.token_urlsafe(18), hashed), realm)
            for login in logins]


def generate(path: Path, realm: str, count: int, *, hashed: bool = True) -> None:
    """Writes a pool of `count` accounts, all refused (the `telemed turn-users` command)."""
    with _locked(path):
        _write(path, _fresh_pool(realm, count, hashed))


class ReturnUsersFile:
    """The account pool in reTurn's users file; `size` accounts are written if the file
    does not exist yet."""

    def __init__(self, path: Path, realm: str, urls: tuple[str, ...], *, size: int = 0,
                 hashed: bool = True, pid_file: Path | None = None) -> None:
        self.path = path
        self.realm = realm
        self.urls = urls
        self.hashed = hashed
        self.pid_file = pid_file
        self.size = size

    def _change(self, pick: Callable[[list[Account]], int | None], state: str
                ) -> tuple[str, str] | None:
        """Gives the picked account `state` and a fresh password: (login, password)."""
        with _locked(self.path):
            if not self.path.exists():
                log.warning("= writing a new reTurn users file with %d accounts", self.size)
                _write(self.path, _fresh_pool(self.realm, self.size, self.hashed))
            accounts = read(self.path)
            index = pick(accounts)
            if index is None:
                return None
            login = accounts[index].login
            password = secrets.token_urlsafe(18)
            accounts[index] = Account(login, _secret(login, self.realm, password, self.hashed),
                                      self.realm, state)
            _write(self.path, accounts)
        self._reload()
        return login, password

    async def issue(self, call_id: str, participant: str, ttl: float, now: float,
                    slot: int) -> TurnLease:
        """The pool's slot n is account n: the pool (in Redis) decided who gets which."""
        changed = await asyncio.to_thread(
            self._change, lambda accounts: slot if 0 <= slot < len(accounts) else None,
            "authorized")
        if changed is None:
            raise TurnExhausted(f"slot {slot} is beyond the accounts in {self.path}")
        login, password = changed
        return TurnLease(call_id, participant, login, password, self.urls, now + ttl,
                         {"account": login})

    async def renew(self, lease: TurnLease, ttl: float, now: float) -> TurnLease:
        return lease  # reTurn accounts have no expiry of their own

    async def revoke(self, lease: TurnLease) -> None:
        def pick(accounts: list[Account]) -> int | None:
            return next((i for i, a in enumerate(accounts) if a.login == lease.username), None)

        await asyncio.to_thread(self._change, pick, "refused")

    def _reload(self) -> None:
        if self.pid_file is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGHUP)
