"""How long the media reader's pass may still run, for the forwarding code it calls (issue 10).

The UDP reader (:mod:`trio_sfu.rtc.udp`) bounds each pass of its loop by a slice of time and
checks it between datagrams, so HTTP joins, DTLS handshakes and timers run every few ms while
media saturates the core. But one datagram can cost far more than a slice: a packet of a room
of 800 subscribers takes ≈ 6–7 ms to fan out (docs/benchmarks.md, "Control at saturation"),
so a pass was never shorter than that, and a join, ≈ 30 passes of the run loop, took 130–250 ms.

So the fan-out looks at the same deadline every :data:`FANOUT_CHUNK` subscribers
(``sfu/groups.py``) and, past it, leaves the rest of that packet's subscribers as a
continuation here. The reader runs continuations first in its next pass, before any datagram
read after them, so each subscriber still gets a stream's packets in order.

One budget per process: Trio runs one task at a time, and only a reader's synchronous dispatch
sets a deadline (every other caller — a timer, the relay's NATS callback, a test — sees
``inf`` and forwards whole, as before).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

#: Subscribers served between two looks at the clock: ≈ 0.2–0.3 ms of protect + send, so the
#: clock costs nothing per packet and a pass overruns its slice by at most that.
FANOUT_CHUNK = 32

#: What is left of a fan-out: called with the reader's current time (a send time for the
#: bandwidth estimator's record, so it is the time of the pass that really sends).
Continuation = Callable[[float], None]


class ReaderBudget:
    __slots__ = ("clock", "deadline", "leftover")

    def __init__(self) -> None:
        #: ``clock()`` past this: defer the rest (``inf`` outside a reader's dispatch)
        self.deadline = math.inf
        #: where a deferred rest goes: the deque of the reader whose pass set the deadline
        self.leftover: deque[Continuation] = deque()
        self.clock: Callable[[], float] = time.perf_counter  # tests drive it


#: The process's one budget (see the module's docstring).
BUDGET = ReaderBudget()
