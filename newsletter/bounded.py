"""A cache with a ceiling: planning a million digests must not keep a million answers;
and a collector that leaves those caches alone while they fill."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator
from typing import Any


class Bounded(dict[Any, Any]):
    """A dict that empties itself when full, then refills with what is still asked for.

    Cheaper than an LRU's bookkeeping on every hit, and for these caches as good: what
    many readers share (a popular topic, a paper's blocks) is back after a few look-ups.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def room(self, count: int, *, keep: Iterable[object] = ()) -> None:
        """Make room for ``count`` more entries now, so none of them is dropped while
        the caller still needs it; nor are the entries of ``keep`` it needs too (those
        and ``count`` must fit in ``size``, or the next ``put`` empties it again)."""
        if len(self) + count > self.size:
            kept = {key: self[key] for key in keep if key in self}
            self.clear()
            self.update(kept)

    def put(self, key: object, value: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


@contextlib.contextmanager
def rare_collections() -> Iterator[None]:
    """Run the cycle collector less often for a while. The caches hold hundreds of
    thousands of long-lived objects (explanations, encoded items, tuples) and none of
    them forms a cycle, but every full collection scans them all: at the default
    thresholds planning spent about 5% of its time there (bench/plan.py)."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
