"""Full garbage collections kept off the heap of connected peers (issue 10).

CPython (3.11) runs a full collection when the objects promoted into the oldest generation
since the last one exceed a quarter of what that generation held after it. At saturation
(450 subscribers) the old generation holds the peers' ≈ 300k objects and every full
collection walked all of them: 120-410 ms with the event loop stopped, every few seconds
while peers joined or timers' tasks were promoted — consent checks and HTTP joins waited
behind each one (docs/benchmarks.md, "Control at saturation").

The policy: right after every full collection, what survived it is frozen (``gc.freeze()``:
moved to the permanent generation, which no collection walks). What survived was just proven
reachable, so nothing frozen is garbage at that moment, and the next full collection walks
only what was promoted since — a few thousand objects instead of the whole peer heap.

The cost: an object frozen while alive and later part of unreachable cycles (a peer that
left: its connection, tracks and tasks refer to each other) is never collected while frozen.
So whenever peers have left, at most every ``COMPACT_INTERVAL`` seconds, :meth:`compact`
unfreezes everything and collects once (one full-heap pause, what every full collection
cost before) — and at least every ``MAX_FROZEN_AGE`` seconds if anything was frozen since,
for cyclic garbage that is not a peer's. Memory held by departed peers is so bounded by
what leaves within ``COMPACT_INTERVAL``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import trio

#: Seconds between compactions at most while peers leave (each is one full-heap pause).
COMPACT_INTERVAL = 30.0
#: Seconds after which a compaction runs even if no peer left (other cyclic garbage).
MAX_FROZEN_AGE = 600.0
#: Seconds between looks at the peer count.
CHECK_INTERVAL = 1.0


class GcPolicy:
    """Freeze the survivors of every full collection; compact once peers have left."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._installed = False
        #: full collections after which the survivors were frozen
        self.freezes = 0
        #: unfreeze + full collection runs (see :meth:`compact`)
        self.compactions = 0
        self.last_compaction = clock()

    def install(self) -> None:
        """Start freezing after full collections (safe to call twice)."""
        if not self._installed:
            gc.callbacks.append(self._after_collection)
            self._installed = True

    def uninstall(self) -> None:
        """Stop freezing; what is frozen stays frozen (as the start-up ``gc.freeze()``)."""
        if self._installed:
            gc.callbacks.remove(self._after_collection)
            self._installed = False

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            # The survivors of a full collection: all reachable now, none of them garbage.
            gc.freeze()
            self.freezes += 1

    def compact(self) -> None:
        """Unfreeze everything and collect it once: frees the cycles of what left while it was
        frozen; the survivors are frozen again at the end of that collection."""
        gc.unfreeze()
        gc.collect()
        if not self._installed:
            gc.freeze()
        self.compactions += 1
        self.last_compaction = self._clock()

    async def run(self, peers: Callable[[], int], check: float = CHECK_INTERVAL) -> None:
        """Until cancelled: install, and compact when peers have left (a fall of ``peers()``
        between looks) and ``COMPACT_INTERVAL`` has passed since the last compaction, or when
        ``MAX_FROZEN_AGE`` has passed and something was frozen since."""
        self.install()
        try:
            seen = peers()
            left = 0
            frozen_at_compaction = self.freezes
            while True:
                await trio.sleep(check)
                now_peers = peers()
                left += max(0, seen - now_peers)
                seen = now_peers
                age = self._clock() - self.last_compaction
                if (left and age >= COMPACT_INTERVAL) or (
                    age >= MAX_FROZEN_AGE and self.freezes != frozen_at_compaction
                ):
                    self.compact()
                    left = 0
                    frozen_at_compaction = self.freezes
        finally:
            self.uninstall()
