"""Shared bits: percentiles and the report format."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from typing import Any

__all__ = ["args", "pct", "report"]


def args(description: str, **defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="a few seconds; for the tests")
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser.parse_args()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def report(name: str, figures: dict[str, Any]) -> None:
    """Human lines, then one JSON line (`RESULT {...}`) that tools and tests read."""
    print(f"== {name} ({platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()})")
    for key, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<40} {shown}")
    print("RESULT " + json.dumps({"bench": name, **figures}))
    sys.stdout.flush()


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
