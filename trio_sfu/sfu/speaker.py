"""Dominant-speaker detection for one room from RFC 6464 audio levels (sans-IO, no Trio).

The algorithm, chosen to be simple to reason about rather than clever:

1. **Per packet** (:meth:`SpeakerDetector.level`): add the packet's loudness
   (``127 - level``, so silence is 0; :func:`trio_sfu.proto.rtp.loudness`) to the speaker's
   running sum. Two integer additions: nothing allocated, nothing decided on the hot path.
2. **Per tick** (:meth:`SpeakerDetector.tick`, the room calls it ~10 times a second): each
   speaker's mean loudness over the tick (0 if no packet came: muted or gone quiet, since
   Opus DTX sends nothing) feeds an exponential moving average with time constant ``tau``
   (0.5 s). Speech is bursty at the syllable scale (~0.2 s); the average turns it into a
   steady score while still following a new speaker within a second.
3. **Hysteresis**: a challenger replaces the dominant speaker only if its score is above the
   speech floor (``floor``, default -60 dBov) *and* above the dominant's score by ``margin``
   (6 dB) *continuously for* ``hold`` (0.4 s), and at least ``min_interval`` (1 s) after the
   previous change. A cough or a door slam (a short burst) lifts the score only partly and
   briefly, so it does not switch; two people at similar levels do not flap.

So a speaker 10+ dB louder than the current one takes over in about 1 s (≈0.5 s to build the
score, 0.4 s hold); at most one change per ``min_interval`` is ever produced. The dominant
speaker stays dominant through silence (as in Jitsi's and LiveKit's UIs) until someone else
qualifies. :meth:`SpeakerDetector.levels` gives the smoothed scores for a ``SPEAKERS`` list.
"""

from __future__ import annotations

import math

__all__ = ["SpeakerDetector"]


class _Speaker:
    __slots__ = ("ahead_since", "count", "score", "total")

    def __init__(self) -> None:
        self.total = 0
        self.count = 0
        self.score = 0.0
        self.ahead_since: float | None = None


class SpeakerDetector:
    """Smoothed dominant speaker with hysteresis; see the module docstring for the rules."""

    __slots__ = (
        "_floor",
        "_hold",
        "_last_change",
        "_last_tick",
        "_margin",
        "_min_interval",
        "_speakers",
        "_tau",
        "dominant",
    )

    def __init__(
        self,
        *,
        tau: float = 0.5,
        margin: float = 6.0,
        hold: float = 0.4,
        min_interval: float = 1.0,
        floor_dbov: int = -60,
    ) -> None:
        self._tau = tau
        self._margin = margin
        self._hold = hold
        self._min_interval = min_interval
        self._floor = 127 + floor_dbov  # as a loudness (127 - level)
        self._speakers: dict[str, _Speaker] = {}
        self._last_tick: float | None = None
        self._last_change = float("-inf")
        self.dominant: str | None = None

    def add(self, speaker: str) -> None:
        """Start tracking a speaker (an audio publisher of the room)."""
        self._speakers.setdefault(speaker, _Speaker())

    def remove(self, speaker: str) -> None:
        """Forget a speaker; if it was dominant, the next qualifying one takes over at once."""
        self._speakers.pop(speaker, None)
        if self.dominant == speaker:
            self.dominant = None
            self._last_change = float("-inf")

    def level(self, speaker: str, loudness: int) -> None:
        """Record one packet's loudness (``127 - RFC 6464 level``) for ``speaker``."""
        s = self._speakers.get(speaker)
        if s is not None:
            s.total += loudness
            s.count += 1

    def levels(self) -> list[tuple[str, float]]:
        """Smoothed scores (loudness, 0..127), loudest first, for a ``SPEAKERS`` message."""
        return sorted(((k, s.score) for k, s in self._speakers.items()), key=lambda kv: -kv[1])

    def tick(self, now: float) -> str | None:
        """Update the scores; return the new dominant speaker if it changed, else None."""
        last = self._last_tick
        self._last_tick = now
        dt = 0.0 if last is None else max(0.0, now - last)
        alpha = 1.0 - math.exp(-dt / self._tau) if dt > 0 else 1.0
        for s in self._speakers.values():
            mean = s.total / s.count if s.count else 0.0
            s.score += alpha * (mean - s.score)
            s.total = s.count = 0
        current = self._speakers.get(self.dominant) if self.dominant is not None else None
        bar = max(float(self._floor), (current.score + self._margin) if current else 0.0)
        best: str | None = None
        best_score = -1.0
        for name, s in self._speakers.items():
            if s is current or s.score < bar:
                s.ahead_since = None
                continue
            if s.ahead_since is None:
                s.ahead_since = now
            if now - s.ahead_since >= self._hold and s.score > best_score:
                best, best_score = name, s.score
        if best is None or now - self._last_change < self._min_interval:
            return None
        self.dominant = best
        self._last_change = now
        for s in self._speakers.values():
            s.ahead_since = None
        return best
