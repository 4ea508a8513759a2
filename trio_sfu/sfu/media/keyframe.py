"""Keyframe requests towards a publisher: the per-track throttle and FIR numbering.

Every subscriber that starts a video, loses packets it cannot repair or cannot decode asks for
a keyframe; a publisher that obeyed each request would send keyframes back to back and starve
its bitrate. The SFU therefore forwards at most one PLI/FIR per track per interval (issue 3:
"at most one per track per 500 ms"), and the keyframe that answers it serves every subscriber.
"""

from __future__ import annotations

__all__ = ["FirSequence", "KeyframeThrottle"]


class KeyframeThrottle:
    """At most one keyframe request per ``min_interval`` seconds for one published track.

    A request refused by :meth:`allow` is remembered: if no keyframe arrives before the
    interval is over (:meth:`on_keyframe` not called), :meth:`due` grants it then, so a
    subscriber that joined right after another one's request still gets its keyframe promptly
    instead of waiting for its own retry. The driver arms a timer at :meth:`get_timer`.
    """

    __slots__ = ("_last", "_min_interval", "_pending", "sent", "suppressed")

    def __init__(self, min_interval: float = 0.5) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self._min_interval = min_interval
        self._last: float | None = None
        self._pending = False
        self.sent = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        """True if a request may go to the publisher now (and counts as sent)."""
        last = self._last
        if last is None or now - last >= self._min_interval:
            self._last = now
            self._pending = False
            self.sent += 1
            return True
        self._pending = True
        self.suppressed += 1
        return False

    def on_keyframe(self) -> None:
        """A keyframe arrived from the publisher: it answers any refused request."""
        self._pending = False

    def get_timer(self) -> float | None:
        """When a refused request becomes due; None if there is none."""
        if not self._pending or self._last is None:
            return None
        return self._last + self._min_interval

    def due(self, now: float) -> bool:
        """True if a refused request should be sent now (and counts as sent)."""
        if not self._pending:
            return False
        last = self._last
        if last is not None and now - last < self._min_interval:
            return False
        self._last = now
        self._pending = False
        self.sent += 1
        return True


class FirSequence:
    """The command sequence number of the FIRs one sender sends about one media source.

    RFC 5104 §4.3.1.1: the number is kept per (sender SSRC, target SSRC) pair, increased by 1
    modulo 256 for each new request, and not increased when a request is repeated; the
    initial value is arbitrary.
    """

    __slots__ = ("_seq",)

    def __init__(self, start: int = 0) -> None:
        self._seq = start & 0xFF

    @property
    def current(self) -> int:
        """The number of the last request: use it to repeat that request."""
        return self._seq

    def next_request(self) -> int:
        """The number for a new request."""
        self._seq = (self._seq + 1) & 0xFF
        return self._seq
