"""The cyclic garbage collector, tuned for a long-running hub.

Measured with `python -m bench.signalling` (docs/benchmarks.md §8): in the saturated pass
the collector took about a tenth of the hub's time, most of it in full collections that
walk every object the process holds, a hundred thousand of them from imports alone, and
that stop the event loop for tens to hundreds of milliseconds, which is the half-load p99.
Almost everything a message allocates is freed by reference counting; what the collector
finds is rare cycles, so it can run less often without holding much more memory.
"""

from __future__ import annotations

import gc

__all__ = ["tune_collector"]

#: Allocations between young collections (CPython's default: 700).
YOUNG = 20_000
#: Middle-generation collections between full ones (default: 10). A full collection
#: also waits until a quarter of the long-lived objects are new since the last one.
FULL_EVERY = 20


def tune_collector(young: int = YOUNG, full_every: int = FULL_EVERY) -> None:
    """Once the service is up: what exists now (modules, classes, settings) is moved out
    of the collector's sight for good (`gc.freeze`: it lives as long as the process, so
    there is nothing there to find), and collections are made rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, 10, full_every)
