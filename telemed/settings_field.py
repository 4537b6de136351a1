"""One setting: a dataclass field carrying its documentation, unit, bounds and whether it
is a secret; and the error a bad value raises."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["SettingsError", "setting"]


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting."""


def setting(
    default: Any,
    doc: str,
    *,
    unit: str = "",
    min: float | None = None,
    max: float | None = None,
    secret: bool = False,
) -> Any:
    meta = {"doc": doc, "unit": unit, "min": min, "max": max, "secret": secret}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for list defaults")
    return field(default=default, metadata=meta, repr=not secret)
