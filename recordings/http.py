"""Recordings over HTTP: the MIS lists and downloads with its API key; a doctor opens a
player page through a signed, expiring link the MIS asks for. HTTP Range works on both, so
browsers can seek. A file is served only when the call's metadata lists its name, so no
path from a request ever reaches the file system.

Range (RFC 9110 section 14): one byte range gets 206; a header in another unit, or with
several ranges, is ignored (the whole file, 200, as a server that does not do multipart
may); a malformed one, or one no byte of the file satisfies, gets 416 with
`Content-Range: bytes */<size>`. aiohttp's own parser is stricter than the RFC in the
first two cases (416) and lax in one (`bytes=-0`), so the header is judged here first.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp_jinja2
import jwt
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from recordings.catalog import Catalog
from recordings.retention import purge

__all__ = ["CATALOG", "setup_recordings"]

CATALOG = web.AppKey("catalog", Catalog)


@dataclass(frozen=True, kw_only=True)
class RecordingsConfig:
    """What the recordings routes need of the service: the link-signing secret, the public
    URL links start with, and the retention period (days; 0 is off)."""

    secret: str
    public_url: str
    retention_days: float


RECORDINGS_CONFIG = web.AppKey("recordings_config", RecordingsConfig)


class PageContext(Protocol):
    """The pages' template context (language, strings), supplied by whoever serves pages."""

    def __call__(self, request: web.Request, **extra: object) -> dict[str, object]: ...


PAGE_CONTEXT = web.AppKey("page_context", PageContext)
SPEC = re.compile(r"^(\d*)-(\d*)$")
NOT_FOUND = json.dumps({"code": "recording.not_found",
                        "message": "no such recording, or no such file of it"})
UNAVAILABLE = json.dumps({"code": "service.unavailable",
                          "message": "the service's database is not answering; retry shortly"})
AUDIENCE = "telemed-recordings"
LINK_TTL = 3600


def _secret(request: web.Request) -> str:
    return request.app[RECORDINGS_CONFIG].secret


async def _meta(request: web.Request, call_id: str) -> dict[str, Any]:
    try:
        meta = await request.app[CATALOG].get(call_id)
    except (aioredis.RedisError, OSError):
        if request.path.startswith("/api/v1/"):
            raise  # the API's own middleware answers it, as for every API route
        # The player page: the same documented answer instead of a plain 500.
        raise web.HTTPServiceUnavailable(text=UNAVAILABLE, content_type="application/json",
                                         headers={"Retry-After": "5"}) from None
    if meta is None:
        raise web.HTTPNotFound(text=NOT_FOUND, content_type="application/json")
    return meta


def judge_range(header: str | None, size: int) -> str | None:
    """What to do with a Range header for a file of `size` bytes: None (serve it all),
    `"unsatisfiable"` (416), or the one range as `bytes=<first>-<last>`."""
    if header is None:
        return None
    unit, eq, specs = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None  # a unit we do not know: MUST be ignored
    ranges: list[tuple[int, int]] = []
    for spec in specs.split(","):
        m = SPEC.match(spec.strip())
        if m is None or m.group(1) == m.group(2) == "":
            return "unsatisfiable"  # malformed: rejected rather than guessed at
        first, last = m.group(1), m.group(2)
        if first:
            if last and int(last) < int(first):
                return "unsatisfiable"
            if int(first) < size:
                ranges.append((int(first), min(int(last), size - 1) if last else size - 1))
        elif int(last) > 0 and size > 0:
            ranges.append((max(0, size - int(last)), size - 1))
    if not ranges:
        return "unsatisfiable"
    if len(specs.split(",")) > 1:
        return None  # several ranges: the whole file rather than multipart
    first_byte, last_byte = ranges[0]
    return f"bytes={first_byte}-{last_byte}"


async def _file(request: web.Request, meta: dict[str, Any], name: str) -> web.StreamResponse:
    path = request.app[CATALOG].path_of(meta, name)
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text=NOT_FOUND, content_type="application/json")
    headers = {"Content-Type": "video/webm", "Cache-Control": "private, no-store",
               "Content-Disposition": f'inline; filename="{meta["call"]}-{name}"'}
    size = path.stat().st_size
    verdict = judge_range(request.headers.get("Range"), size)
    if verdict == "unsatisfiable":
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}",
                                                 "Accept-Ranges": "bytes"})
    return JudgedFile(path, verdict, headers=headers)


class JudgedFile(web.FileResponse):
    """A FileResponse that serves the Range judged above instead of the request's own.

    aiohttp prepares a handler's response itself; preparing it in the handler too sends the
    file, then fails the second time and drops the keep-alive connection. So the judged
    Range is put in when aiohttp prepares it, once."""

    def __init__(self, path: Path, judged: str | None, *, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._judged = judged

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        plain = {k: v for k, v in request.headers.items() if k.lower() != "range"}
        judged = {**plain, **({"Range": self._judged} if self._judged else {})}
        return await super().prepare(request.clone(headers=judged))


async def list_recordings(request: web.Request) -> web.Response:
    numbers: dict[str, float] = {}
    for name, default in (("since", 0.0), ("limit", 50.0)):
        try:
            numbers[name] = float(request.query.get(name, default))
            if not math.isfinite(numbers[name]):
                raise ValueError(name)
        except ValueError:
            return web.json_response({"code": "request.invalid", "message": "a number",
                                      "field": name}, status=422)
    since, limit = numbers["since"], int(numbers["limit"])
    items = await request.app[CATALOG].find(since=since, limit=max(1, min(limit, 200)))
    return web.json_response({"recordings": items})


async def get_recording(request: web.Request) -> web.Response:
    return web.json_response(await _meta(request, request.match_info["call_id"]))


async def download(request: web.Request) -> web.StreamResponse:
    meta = await _meta(request, request.match_info["call_id"])
    return await _file(request, meta, request.match_info["name"])


async def make_link(request: web.Request) -> web.Response:
    meta = await _meta(request, request.match_info["call_id"])
    token = jwt.encode({"call": meta["call"], "aud": AUDIENCE,
                        "exp": int(time.time()) + LINK_TTL}, _secret(request),
                       algorithm="HS256")
    base = request.app[RECORDINGS_CONFIG].public_url
    return web.json_response({"url": f"{base}/recordings/{token}", "expiresIn": LINK_TTL})


async def run_purge(request: web.Request) -> web.Response:
    days = request.app[RECORDINGS_CONFIG].retention_days
    if days <= 0:
        return web.json_response({"code": "request.invalid", "message": "retention is off "
                                  "(recordings.retention_days = 0)", "field": "retention"},
                                 status=422)
    now = time.time()
    done = await purge(request.app[CATALOG], older_than=now - days * 86400, now=now,
                       by="api", dry_run=request.query.get("dryRun") == "true")
    return web.json_response({"dryRun": request.query.get("dryRun") == "true",
                              "calls": done})


def _link_call(request: web.Request) -> str:
    try:
        claims = jwt.decode(request.match_info["token"], _secret(request),
                            algorithms=["HS256"], audience=AUDIENCE,
                            options={"require": ["exp", "aud", "call"]})
    except jwt.PyJWTError:
        raise web.HTTPForbidden(text="this link is invalid or has expired") from None
    if not isinstance(claims["call"], str):
        raise web.HTTPForbidden(text="this link is invalid or has expired")
    return claims["call"]


async def player(request: web.Request) -> web.Response:
    meta = await _meta(request, _link_call(request))
    page = aiohttp_jinja2.render_template(
        "recordings.html", request, request.app[PAGE_CONTEXT](request, meta=meta,
                                                 token=request.match_info["token"]))
    # The link itself is the credential: never in a cache, never sent on as a Referer.
    page.headers["Cache-Control"] = "no-store"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


async def player_file(request: web.Request) -> web.StreamResponse:
    meta = await _meta(request, _link_call(request))
    return await _file(request, meta, request.match_info["name"])


def setup_recordings(app: web.Application) -> None:
    app.router.add_get("/api/v1/recordings", list_recordings)
    app.router.add_post("/api/v1/recordings/purge", run_purge)
    app.router.add_get("/api/v1/recordings/{call_id}", get_recording)
    app.router.add_get("/api/v1/recordings/{call_id}/files/{name}", download)
    app.router.add_post("/api/v1/recordings/{call_id}/links", make_link)
    app.router.add_get("/recordings/{token}", player)
    app.router.add_get("/recordings/{token}/{name}", player_file)
