"""The API's answers and its request checks: error bodies, status codes, and the
validation of a new call's participants and schedule."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from mis.jsonsafe import dumps
from signaling.call import CallKind
from signaling.tokens import ROLES

__all__ = [
    "Invalid",
    "TooLarge",
    "check_participants",
    "check_schedule",
    "limited",
    "problem",
    "reply",
    "status_of",
    "unavailable",
]

ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: Seconds a 503 (Redis away) asks the MIS to wait before retrying.
RETRY_AFTER = 5
#: Longest appointment window.
MAX_SCHEDULE = 7 * 86400


def reply(body: Any, status: int = 200) -> web.Response:
    # What the hub holds may be deeper or odder than strict JSON allows (client data).
    return web.json_response(body, status=status, dumps=dumps)


def status_of(code: str) -> int:
    """The HTTP status of a CallError's code (docs/api.md lists each)."""
    if code in ("call.not_found", "participant.not_found", "event.not_found"):
        return 404
    return 507 if code == "recording.disk_full" else 409


def problem(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return reply(body, status=status)


def unavailable() -> web.Response:
    """Redis (history, idempotency, TURN pool, replay guard) is away or hanging."""
    response = problem(503, "service.unavailable",
                       "the service's database is not answering; retry shortly")
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def limited(message: str) -> web.Response:
    response = problem(429, "rate.limited", message)
    # Counters are per minute, fixed windows: the current one ends within a minute.
    response.headers["Retry-After"] = "60"
    return response


class TooLarge(Exception):
    pass


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_participants(raw: Any, kind: CallKind) -> list[tuple[str, str, str]]:
    if not isinstance(raw, list) or not raw:
        raise Invalid("participants", "a non-empty list of participants")
    out: list[tuple[str, str, str]] = []
    for i, p in enumerate(raw):
        where = f"participants[{i}]"
        if not isinstance(p, dict):
            raise Invalid(where, "an object with id, name and role")
        pid, name, role = p.get("id"), p.get("name"), p.get("role")
        if not isinstance(pid, str) or not ID.match(pid):
            raise Invalid(f"{where}.id", "1-64 letters, digits or _.@-")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise Invalid(f"{where}.name", "a name of 1-200 characters")
        if role not in ROLES:
            raise Invalid(f"{where}.role", f"one of {', '.join(ROLES)}")
        if any(pid == o[0] for o in out):
            raise Invalid(f"{where}.id", "participant ids must be unique")
        out.append((pid, name, role))
    return out


def check_schedule(raw: Any, now: float) -> dict[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise Invalid("schedule", "an object with start and end (unix seconds)")
    times: dict[str, float] = {}
    for name in ("start", "end"):
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not 0 < value < 2 ** 40:
            raise Invalid(f"schedule.{name}", "a time in unix seconds")
        times[name] = float(value)
    if times["end"] <= times["start"]:
        raise Invalid("schedule.end", "after schedule.start")
    if times["end"] <= now:
        raise Invalid("schedule.end", "in the future")
    if times["end"] - times["start"] > MAX_SCHEDULE:
        raise Invalid("schedule.end", f"at most {MAX_SCHEDULE // 3600} hours after the start")
    return times
