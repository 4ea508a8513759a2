"""Generic NACK generation towards a publisher (RFC 4585 §6.2.1, §3.2).

The SFU receives each publisher stream once and repairs it once, for every subscriber: it
notices sequence gaps and asks the publisher to resend them, so subscribers' own NACKs can be
answered from the packet cache with the repaired packets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from trio_sfu.proto.rtp.packet import seq_delta

__all__ = ["NackGenerator"]

_MIN_INTERVAL: Final = 0.02  # seconds between NACKs of one packet however small the RTT


class _Missing:
    __slots__ = ("first_seen", "retries", "sent_at")

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.sent_at = float("-inf")
        self.retries = 0


class NackGenerator:
    """Track one incoming stream's sequence gaps and say which numbers to NACK, and when.

    Sans-IO like every core: the driver feeds :meth:`on_packet` with each packet's sequence
    number (media packets and RTX repairs alike), arms a timer at :meth:`get_timer` and sends
    what :meth:`due` returns as one :class:`~trio_sfu.proto.rtcp.Nack`.

    A missing packet is NACKed at once, then again each ``max(rtt, 20 ms)`` until it arrives,
    ``max_retries`` NACKs were sent or it is older than ``max_age`` seconds, or more than
    ``max_gap`` packets behind the newest. A jump of more than ``max_gap`` at once is treated
    as a reset, not a burst of NACKs: memory stays bounded by ``max_gap`` entries, and
    :meth:`on_packet` returns True to say the loss is beyond repair so the caller asks for a
    keyframe instead (as libwebrtc's NackRequester does when its list overflows).
    """

    __slots__ = (
        "_bad_seq",
        "_highest",
        "_max_age",
        "_max_gap",
        "_max_retries",
        "_missing",
        "_next_due",
        "_skip_until",
        "_started",
        "abandoned",
        "on_gap",
        "recovered",
        "requested",
        "resets",
    )

    def __init__(self, *, max_age: float = 1.0, max_retries: int = 10, max_gap: int = 1000) -> None:
        if max_gap < 1 or max_gap >= 0x8000:
            raise ValueError("max_gap must be 1..32767")
        if max_retries < 1:
            raise ValueError("max_retries must be at least 1")
        self._max_age = max_age
        self._max_retries = max_retries
        self._max_gap = max_gap
        # Extended sequence → state; insertion order is ascending sequence order, because gaps
        # are only ever added above the highest number seen (a reset clears the dict first).
        self._missing: dict[int, _Missing] = {}
        self._highest = 0
        self._started = False
        self._bad_seq = -1
        self._next_due: float | None = None
        #: until then a gap is not repaired (see :meth:`skip_gaps_until`)
        self._skip_until = -math.inf
        self.requested = 0  # sequence numbers put in NACKs, retries included
        self.recovered = 0  # missing packets that arrived after all (late or repaired)
        self.abandoned = 0  # missing packets given up on (age, retries, too far behind)
        self.resets = 0  # jumps too large to repair, and numbering restarts
        #: called (with ``now``) when a gap makes a NACK due: the driver's timer may sleep
        #: past it (the publisher leg moves its sleep instead of waking per packet, issue 10)
        self.on_gap: Callable[[float], None] | None = None

    @property
    def missing(self) -> int:
        """How many sequence numbers are currently being asked for."""
        return len(self._missing)

    def skip_gaps_until(self, until: float) -> None:
        """Gaps that show before ``until`` are not repaired: the sender's path failed and
        moved (its packets meanwhile went down the failed path), a keyframe was asked for, and
        retransmitting seconds-old packets would only delay the subscribers' decoders (Chromium
        held a complete keyframe ~2 s behind such stale frames)."""
        self._skip_until = until

    def on_packet(self, seq: int, now: float) -> bool:
        """Record one received packet; True if the loss is beyond repair (ask for a keyframe)."""
        if not self._started:
            self._started = True
            self._highest = seq & 0xFFFF
            return False
        highest = self._highest
        if seq == (highest + 1) & 0xFFFF:  # the common case: in order (no call)
            self._highest = highest + 1
            return False
        diff = seq_delta(seq, highest)
        if diff > 1:
            ext = highest + diff
            self._highest = ext
            if now < self._skip_until:
                self.abandoned += diff - 1
                return False
            if diff - 1 > self._max_gap:
                self.abandoned += len(self._missing)
                self._missing.clear()
                self._next_due = None
                self.resets += 1
                return True
            missing = self._missing
            for lost in range(highest + 1, ext):
                missing[lost] = _Missing(now)
            self._forget_below(ext - self._max_gap)
            if self._next_due is None or now < self._next_due:
                self._next_due = now
                if self.on_gap is not None:
                    self.on_gap(now)
            return False
        if diff == 0:
            return False  # duplicate
        ext = highest + diff
        if self._missing.pop(ext, None) is not None:
            self.recovered += 1
            return False
        if -diff > self._max_gap:
            # RFC 3550 A.1's bad_seq rule: two far-behind packets in sequence mean the sender
            # restarted its numbering; follow it rather than ignore the stream from now on.
            if (seq & 0xFFFF) == self._bad_seq:
                self.abandoned += len(self._missing)
                self._missing.clear()
                self._next_due = None
                self._highest = ext
                self.resets += 1
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
        return False

    def _forget_below(self, floor: int) -> None:
        missing = self._missing
        while missing:
            oldest = next(iter(missing))
            if oldest >= floor:
                break
            del missing[oldest]
            self.abandoned += 1

    def get_timer(self) -> float | None:
        """When :meth:`due` may have something to send; None while nothing is missing.

        Conservative: it can be earlier than needed (a packet arrived meanwhile), never later.
        """
        return self._next_due

    def due(self, now: float, rtt: float) -> list[int]:
        """Sequence numbers (16-bit, ascending) to NACK now; updates retry state and timer.

        ``rtt`` is the publisher leg's round-trip time in seconds, or a default the caller
        picks when none was measured: a repeat before the first NACK's answer could arrive
        only duplicates traffic.
        """
        interval = rtt if rtt > _MIN_INTERVAL else _MIN_INTERVAL
        missing = self._missing
        out: list[int] = []
        if not missing:
            self._next_due = None
            return out
        oldest_kept = now - self._max_age
        lowest_kept = self._highest - self._max_gap
        max_retries = self._max_retries
        gone: list[int] = []
        next_due = float("inf")
        for ext, entry in missing.items():
            if entry.first_seen <= oldest_kept or entry.retries >= max_retries or ext < lowest_kept:
                gone.append(ext)
                continue
            resend = entry.sent_at + interval
            if resend <= now:
                out.append(ext & 0xFFFF)
                entry.sent_at = now
                entry.retries += 1
                resend = now + interval
            if resend < next_due:
                next_due = resend
        for ext in gone:
            del missing[ext]
        self.abandoned += len(gone)
        self.requested += len(out)
        self._next_due = next_due if missing else None
        return out
