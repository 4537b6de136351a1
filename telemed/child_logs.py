"""A child's log lines into ours: a line in our own format (key=value or JSON, as the
embedded media server writes) keeps its level and fields; any other line gets a level
from its own words."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

__all__ = ["foreign_level", "parse_log_line"]

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def parse_log_line(line: str) -> tuple[int, str, dict[str, Any]] | None:
    """A line a child logged in our own format (key=value or JSON, as the embedded media
    server does): its level, message and fields, so that they keep their level and call id
    in our log instead of becoming the text of an info line. None for any other line."""
    fields: dict[str, Any]
    if line.startswith("{"):
        try:
            decoded: Any = json.loads(line)
        except ValueError:
            return None
        if not isinstance(decoded, dict):
            return None
        fields = decoded
    elif line.startswith("ts="):
        fields = {}
        for key, raw in _KV.findall(line):
            try:
                fields[key] = json.loads(raw) if raw.startswith('"') else raw
            except ValueError:
                return None
    else:
        return None
    level = logging.getLevelName(str(fields.pop("level", "")).upper())
    message = fields.pop("msg", None)
    if not isinstance(level, int) or not isinstance(message, str):
        return None
    fields.pop("ts", None)
    if "logger" in fields:
        fields["child_logger"] = fields.pop("logger")
    return level, message, {k: v for k, v in fields.items() if k not in _RESERVED}


_SEVERE = re.compile(r"\b(ERROR|FATAL|CRITICAL|PANIC)\b", re.IGNORECASE)
_WARN = re.compile(r"\bWARN(ING)?\b", re.IGNORECASE)


def foreign_level(text: str) -> int:
    """The level of a line a child wrote in its own format: errors and warnings as such
    (coturn writes "ERROR:", redis "# WARNING"), everything else debug."""
    if _SEVERE.search(text):
        return logging.ERROR
    if _WARN.search(text):
        return logging.WARNING
    return logging.DEBUG
