"""One grid, and one task, for the process's periodic per-connection timers (issue 10).

Every publisher leg sends a receiver report and every subscriber leg its sender reports once a
second (RFC 3550 §6.2). Each on its own phase, a room of one publisher and N subscribers woke
the process N + 1 times a second for them, and a wake-up costs far more than the report it
sends (the kernel's sleep and wake plus a pass of Trio's run loop: ≈ 200 µs of CPU on the
development VM, against ≈ 20 µs to receive and forward a packet). On the grid, all of them are
due at the same instant of Trio's clock and run in one pass of the run loop.

One pass, but still one task step per leg: each leg's task armed a deadline, was cancelled out
of its sleep and resumed, ≈ 40–60 µs of Trio's machinery per leg per second on that VM — half
of what 1,000 idle subscribers cost the process (docs/benchmarks.md, "Idle peers"). So the
subscriber legs' reports are not tasks of their own: :class:`Ticker` is one task that wakes on
the grid and calls every registered leg's report function in turn, and a leg's own task sleeps
until the ticker has something for it that must be awaited (a bandwidth probe to pace).

RFC 3550 §6.3.5 randomises report intervals so that the members of one multicast session do not
synchronise; each leg here is a unicast session of its own with one receiver, so reports that
go out together reach different hosts and synchronise nothing on any link.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

#: The ticker checkpoints after this long of reports, so a tick of thousands of legs never
#: holds the media reader and HTTP for longer than the reader's own slice (rtc/udp.py).
TICK_SLICE = 0.002

_clock = time.perf_counter  # a name of its own, so tests can drive the slice

#: What the ticker calls: ``report(now, unix)`` with Trio's clock and the wall clock.
Report = Callable[[float, float], None]


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now`` (on Trio's clock): where a timer that
    repeats every ``interval`` and is due no later than ``now + interval`` fires next."""
    return (math.floor(now / interval) + 1) * interval


class Tick:
    """One leg's registration with a :class:`Ticker`: the report it runs, and the way the
    report hands its owner's task work that must be awaited (:meth:`wake`, :meth:`wait`).
    A report that raises is unregistered and its exception re-raised in the owner's task, so
    a bug ends that connection (its nursery's failure), never the ticker or another leg."""

    __slots__ = ("_error", "_event", "report")

    def __init__(self, report: Report) -> None:
        self.report = report
        self._event = trio.Event()
        self._error: Exception | None = None

    def wake(self) -> None:
        """Let the owner's :meth:`wait` return (called from within the report)."""
        self._event.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> None:
        """Until the report called :meth:`wake`; raises what the report raised."""
        await self._event.wait()
        self._event = trio.Event()
        if self._error is not None:
            raise self._error


class Ticker:
    """Calls every registered report once per ``interval``, on the grid, from one task
    (:meth:`run`, in the SFU's nursery), and not at all while none is registered. Reports
    run in registration order; after :data:`TICK_SLICE` of them the ticker checkpoints and
    goes on in the next pass, skipping legs that were unregistered in between."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._ticks: dict[Tick, None] = {}  # an ordered set
        #: set when the first leg registers: a pod without subscribers never wakes for this
        self._registered = trio.Event()
        #: ticks run and reports called (read by tests)
        self.ticks = 0
        self.reports = 0

    def __len__(self) -> int:
        return len(self._ticks)

    @contextmanager
    def registered(self, report: Report) -> Iterator[Tick]:
        """Call ``report`` every tick while the ``with`` block lasts: the owner's task holds
        it, so the registration ends with the owner's nursery (a leg that left is never
        reported on)."""
        tick = Tick(report)
        self._ticks[tick] = None
        self._registered.set()
        try:
            yield tick
        finally:
            self._ticks.pop(tick, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        ticks = self._ticks
        while True:
            if not ticks:
                self._registered = trio.Event()
                await self._registered.wait()
            await trio.sleep_until(next_tick(trio.current_time(), self.interval))
            if not ticks:
                continue  # the last leg left during the sleep
            self.ticks += 1
            deadline = _clock() + TICK_SLICE
            now, unix = trio.current_time(), time.time()
            for tick in list(ticks):
                if _clock() >= deadline:
                    await trio.lowlevel.checkpoint()
                    deadline = _clock() + TICK_SLICE
                    now, unix = trio.current_time(), time.time()
                if tick not in ticks:
                    continue  # its leg ended while the ticker waited
                self.reports += 1
                try:
                    tick.report(now, unix)
                except Exception as exc:  # the owner's task raises it (Tick)
                    del ticks[tick]
                    tick.fail(exc)
