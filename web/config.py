"""What the pages need of the service's settings, as one AppKey the process fills in."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

__all__ = ["WEB_CONFIG", "WebConfig"]


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    #: The pages' language when the request names none (`ru` or `en`).
    language: str
    #: The address the service listens on: the demo button is offered only on loopback.
    host: str
    demo: bool
    #: Seconds a page may take to reconnect before the others are told it left.
    rejoin_grace: float
    #: Origins (the MIS) allowed to embed the pages in an iframe, and to hear their
    #: postMessage events. Empty: no embedding.
    frame_ancestors: tuple[str, ...] = ()
    #: The hospital's IANA time zone: the workstation's times and its "today".
    time_zone: str = "UTC"


WEB_CONFIG = web.AppKey("web_config", WebConfig)
