"""The hub process's garbage-collector tuning (`telemed.collector`)."""

from __future__ import annotations

import gc
import weakref

from telemed.collector import FULL_EVERY, YOUNG, tune_collector


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_tuning_freezes_what_exists_and_still_collects_later_cycles() -> None:
    """After tuning, start-up objects are frozen, collections are rarer as documented, and
    a reference cycle made afterwards is still reclaimed by a collection."""
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_freeze_count() > 10_000  # the imported modules' objects, at least
        assert gc.get_threshold() == (YOUNG, 10, FULL_EVERY)
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
