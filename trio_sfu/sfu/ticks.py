"""One grid for the process's periodic per-connection timers (issue 10, small rooms).

Every publisher leg sends a receiver report and every subscriber leg its sender reports once a
second (RFC 3550 §6.2). Each on its own phase, a room of one publisher and N subscribers woke
the process N + 1 times a second for them, and a wake-up costs far more than the report it
sends (the kernel's sleep and wake plus a pass of Trio's run loop: ≈ 200 µs of CPU on the
development VM, against ≈ 20 µs to receive and forward a packet). On the grid, all of them are
due at the same instant of Trio's clock and run in one pass of the run loop.

RFC 3550 §6.3.5 randomises report intervals so that the members of one multicast session do not
synchronise; each leg here is a unicast session of its own with one receiver, so reports that
go out together reach different hosts and synchronise nothing on any link.
"""

from __future__ import annotations

import math


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now`` (on Trio's clock): where a timer that
    repeats every ``interval`` and is due no later than ``now + interval`` fires next."""
    return (math.floor(now / interval) + 1) * interval
