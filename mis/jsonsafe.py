"""JSON in and out of the MIS side, within limits.

In: REST bodies are parsed with a nesting limit and without `NaN`/`Infinity` (not JSON,
and a MIS's parser chokes on them when echoed back). Out: whatever the hub holds (client
diagnostics, metadata from before the limits) is written as valid JSON however deep or odd
it is: subtrees past the limit become a marker string and non-finite numbers `null`, so a
call's history and webhooks never stop because one value cannot be encoded.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_DEPTH", "TOO_DEEP", "JsonRefused", "depth_exceeds", "dumps", "parse",
           "sanitize"]

#: Deepest nesting accepted in a REST body (objects and arrays each count one level).
MAX_DEPTH = 32
#: Deepest nesting kept when writing history and webhooks; deeper values are replaced.
OUT_DEPTH = 64
TOO_DEEP = "[nested too deep]"


class JsonRefused(ValueError):
    """A body that is not JSON the API takes; the message says why, for the 422."""


def _no_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON number")


def depth_exceeds(value: Any, limit: int) -> bool:
    """True if `value` nests objects or arrays deeper than `limit` (walked without recursion,
    so any depth json.loads managed to build is safe to measure)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level + 1 > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def parse(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """A REST body, or JsonRefused: not JSON, `NaN`/`Infinity`, or nested too deep."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        # The C parser gives up near the interpreter's recursion limit: deeper than ours.
        raise JsonRefused(f"nested deeper than {max_depth} levels") from None
    except JsonRefused:
        raise
    except ValueError:
        raise JsonRefused("not JSON") from None
    if depth_exceeds(value, max_depth):
        raise JsonRefused(f"nested deeper than {max_depth} levels")
    return value


def sanitize(value: Any, limit: int = OUT_DEPTH) -> Any:
    """A copy of `value` that encodes as strict JSON: the recursion is bounded by `limit`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list):
        if limit <= 0:
            return TOO_DEEP
        if isinstance(value, dict):
            return {str(k): sanitize(v, limit - 1) for k, v in value.items()}
        return [sanitize(v, limit - 1) for v in value]
    if isinstance(value, tuple):
        return sanitize(list(value), limit)
    return value


def dumps(value: Any, **kw: Any) -> str:
    """json.dumps that always yields strict JSON; the common case costs one plain encode."""
    try:
        return json.dumps(value, allow_nan=False, **kw)
    except (RecursionError, ValueError):
        return json.dumps(sanitize(value), allow_nan=False, **kw)
