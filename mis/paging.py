"""`GET /calls/{id}` reads a call's timeline a page at a time: `timelineFrom` (the number
of the first entry wanted) and `timelineLimit` (how many); the answer's `timelinePage`
says where the next page starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mis.answers import Invalid
from mis.history import BOOKKEEPING

__all__ = ["PAGE_DEFAULT", "PAGE_MAX", "paged", "timeline_window"]

#: Entries in one page when the request names no `timelineLimit`.
PAGE_DEFAULT = 200
#: The most one page may hold.
PAGE_MAX = 1000


def _whole(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if name not in query:
        return None
    raw = query[name]
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Invalid(name, f"a whole number {low}-{high}")
    return int(raw)


def timeline_window(query: Mapping[str, str]) -> tuple[int | None, int]:
    """(first entry's number or None for the oldest kept, page size) from the query."""
    start = _whole(query, "timelineFrom", 0, 2 ** 53)
    size = _whole(query, "timelineLimit", 1, PAGE_MAX)
    return start, PAGE_DEFAULT if size is None else size


def paged(snap: dict[str, Any], first: int, entries: list[dict[str, Any]], end: int
          ) -> dict[str, Any]:
    """The call's summary with one page of its timeline and where the next one starts."""
    after = first + len(entries)
    out = {k: v for k, v in snap.items()
           if k not in BOOKKEEPING and k not in ("timeline", "timelineFrom", "timelineEnd")}
    out["timeline"] = entries
    out["timelinePage"] = {
        "from": first, "next": after if after < end else None, "total": end,
        "clientEventsDropped": int(snap.get("clientEventsDropped") or 0)}
    return out
