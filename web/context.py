"""What every page template gets: language, strings, and the page's own values."""

from __future__ import annotations

from aiohttp import web

from web.config import WEB_CONFIG
from web.i18n import LANGUAGES, strings

__all__ = ["language", "page_context"]


def language(request: web.Request) -> str:
    """The page's language: `?lang=` if we speak it, else the configured default."""
    wanted = request.query.get("lang", "")
    return wanted if wanted in LANGUAGES else request.app[WEB_CONFIG].language


def page_context(request: web.Request, **extra: object) -> dict[str, object]:
    """What every page template gets: language, strings, and the page's own values."""
    lang = language(request)
    return {"lang": lang, "t": strings(lang), "languages": LANGUAGES, **extra}
