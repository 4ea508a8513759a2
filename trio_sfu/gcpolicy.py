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
So once a peer has left (whoever removes peers calls :meth:`GcPolicy.note_left`; in the pod,
``RtcServer.on_peer_left``), at most every ``COMPACT_INTERVAL`` seconds, :meth:`compact`
unfreezes everything and collects once (one full-heap pause, what every full collection cost
before) — and every ``MAX_FROZEN_AGE`` seconds if anything was frozen since the last one, for
cyclic garbage that is not a peer's. Memory held by departed peers is so bounded by what
leaves within ``COMPACT_INTERVAL``.

The policy's task is woken by leaves, not by a clock: an idle pod (issue 10 counts its
wake-ups) sees one wake-up per ``MAX_FROZEN_AGE``, none per second.
"""

from __future__ import annotations

import gc
from typing import Any

import trio

#: Seconds between compactions at most while peers leave (each is one full-heap pause).
COMPACT_INTERVAL = 30.0
#: Seconds after which a compaction runs even if no peer left (other cyclic garbage).
MAX_FROZEN_AGE = 600.0
#: Seconds from a leave to the compaction at the earliest: the departed peer's tasks and room
#: membership are released in the moments after its routes are dropped, and what is still
#: reachable during a compaction is frozen again until the next one.
LEAVE_SETTLE = 1.0


class GcPolicy:
    """Freeze the survivors of every full collection; compact once peers have left."""

    def __init__(self) -> None:
        self._installed = False
        #: set by :meth:`note_left`, replaced when the compaction it asks for starts
        self._left = trio.Event()
        #: full collections after which the survivors were frozen
        self.freezes = 0
        #: unfreeze + full collection runs (see :meth:`compact`)
        self.compactions = 0
        #: peers reported gone (:meth:`note_left`)
        self.leaves = 0
        #: times :meth:`run`'s task was woken (a leave, a compaction's deadline, the age check):
        #: what an idle pod pays for the policy
        self.wakeups = 0

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

    def note_left(self) -> None:
        """A peer was removed: its objects may be frozen garbage now. Cheap and synchronous
        (called from the peer's teardown); the compaction runs later in :meth:`run`'s task."""
        self.leaves += 1
        self._left.set()

    async def run(self) -> None:
        """Until cancelled: install, and compact ``COMPACT_INTERVAL`` after the last
        compaction (``LEAVE_SETTLE`` after the leave at the earliest) once a peer has left, or
        every ``MAX_FROZEN_AGE`` if something was frozen since the last compaction. Sleeps in
        between: no periodic look while no peer leaves."""
        self.install()
        try:
            last = trio.current_time()
            frozen_at_compaction = self.freezes
            while True:
                with trio.move_on_at(last + MAX_FROZEN_AGE):
                    await self._left.wait()
                self.wakeups += 1
                if self._left.is_set():
                    left_at = trio.current_time()
                    await trio.sleep_until(max(last + COMPACT_INTERVAL, left_at + LEAVE_SETTLE))
                    self.wakeups += 1
                    # This compaction covers every leave so far (the poll it replaced did the
                    # same); leaves from here on ask for the next one.
                    self._left = trio.Event()
                elif self.freezes == frozen_at_compaction:
                    last = trio.current_time()  # nothing frozen since: nothing to free
                    continue
                self.compact()
                last = trio.current_time()
                frozen_at_compaction = self.freezes
        finally:
            self.uninstall()
