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

__all__ = ["RoomSpeakers", "SpeakerDetector", "speaker_line", "speakers_line"]


class _Speaker:
    __slots__ = ("ahead_since", "count", "last_at", "last_mean", "score", "total")

    def __init__(self) -> None:
        self.total = 0
        self.count = 0
        self.score = 0.0
        self.ahead_since: float | None = None
        #: the last tick's mean and when it had samples (``hold_missing``)
        self.last_mean = 0.0
        self.last_at = float("-inf")


class SpeakerDetector:
    """Smoothed dominant speaker with hysteresis; see the module docstring for the rules."""

    __slots__ = (
        "_floor",
        "_hold",
        "_hold_missing",
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
        hold_missing: float = 0.0,
    ) -> None:
        self._tau = tau
        #: a speaker without samples in a tick keeps its last mean this long (0: it is silent
        #: at once, right for packets — Opus DTX sends none; a detector fed by pods' reports
        #: sets it above the report interval, so a late report is not a moment of silence)
        self._hold_missing = hold_missing
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

    def __contains__(self, speaker: object) -> bool:
        return speaker in self._speakers

    @property
    def floor(self) -> int:
        """The speech floor as a loudness (``127 + floor_dbov``)."""
        return self._floor

    def follow(self, speaker: str | None, now: float) -> None:
        """Take ``speaker`` as dominant because another detector decided it (a room spanning
        pods has one deciding pod; the others follow it, so a pod that takes over deciding
        continues from the room's speaker rather than from its own guess)."""
        if speaker == self.dominant or (speaker is not None and speaker not in self._speakers):
            return
        self.dominant = speaker
        self._last_change = now
        for s in self._speakers.values():
            s.ahead_since = None

    def tick(self, now: float, *, decide: bool = True) -> str | None:
        """Update the scores; return the new dominant speaker if it changed, else None.

        With ``decide`` False only the scores move (a pod that is not the room's decider)."""
        last = self._last_tick
        self._last_tick = now
        dt = 0.0 if last is None else max(0.0, now - last)
        alpha = 1.0 - math.exp(-dt / self._tau) if dt > 0 else 1.0
        for s in self._speakers.values():
            if s.count:
                mean = s.last_mean = s.total / s.count
                s.last_at = now
            elif now - s.last_at <= self._hold_missing:
                mean = s.last_mean
            else:
                mean = 0.0
            s.score += alpha * (mean - s.score)
            s.total = s.count = 0
        if not decide:
            return None
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


# -- the room's speaker across pods ------------------------------------------------------------

#: How often a pod reports its publishers' loudness, and how often the detectors tick.
WINDOW = 0.25
#: A pod whose reports stopped this long ago is out: its publishers are forgotten and it is no
#: longer a candidate decider (it died, or its last audio publisher left).
NODE_STALE = 1.0
#: ``SPEAKERS`` lists go out at most this often; a new ``SPEAKER`` goes out at once.
LEVELS_INTERVAL = 0.5
#: The decider repeats its decision this often even if nothing changed (a pod that just opened
#: the room learns the speaker).
REPEAT_INTERVAL = 2.0
#: Entries of a ``SPEAKERS`` list at most.
MAX_LISTED = 8

#: (publisher id, value) pairs: loudness 0..127 in reports, dBov -127..0 in decisions
Levels = tuple[tuple[str, int], ...]


def speaker_line(publisher_id: str) -> str:
    """``SPEAKER <PUB_ID>``: the room's active speaker changed."""
    return f"SPEAKER {publisher_id}"


def speakers_line(levels: Levels) -> str:
    """``SPEAKERS <PUB_ID>:<dBov> ...``: who is audible, loudest first (empty: nobody)."""
    return " ".join(["SPEAKERS", *(f"{p}:{level}" for p, level in levels)])


class RoomSpeakers:
    """The room's active speaker as one pod takes part in finding it (sans-IO).

    Why this shape: a room's publishers sit on several pods and each pod sees only its own
    publishers' packets. Per-packet levels never cross pods; instead every pod with audio
    publishers reports each one's mean loudness over a :data:`WINDOW` (a ``SpeakerLevels``
    command on the room's subject, four a second), and every pod feeds the reports it hears,
    and its own as it makes them, into one :class:`SpeakerDetector`. So all pods hold
    (nearly) the same scores. Two detectors on two pods could still choose
    differently in a near tie and then each keep its choice (hysteresis), so exactly one pod
    *decides*: the reporting pod with the smallest node id (no election messages: each pod
    sees the same set of reporters). It publishes an ``ActiveSpeaker`` decision; every pod
    follows it (:meth:`heard_decision`) and tells its local subscribers. If the decider stops
    reporting (it died, or its publishers left) the next smallest takes over within
    :data:`NODE_STALE`, continuing from the speaker it followed. With one pod this is the
    same code with one reporter, and nothing on the bus but decisions (no other pod needs
    the reports: ``Bus.spans_pods``).
    """

    def __init__(self, node: str, detector: SpeakerDetector | None = None) -> None:
        self.node = node
        # Reports come every WINDOW but not in phase with our ticks: hold one over a tick.
        self.detector = detector or SpeakerDetector(hold_missing=2.5 * WINDOW)
        #: reporting pods: when each last reported, and the publishers it reported
        self._nodes: dict[str, tuple[float, frozenset[str]]] = {}
        self._sent: tuple[str, Levels] | None = None
        self._sent_at = float("-inf")
        self._levels_sent_at = float("-inf")
        #: the room's active speaker as last decided (what subscribers here were told)
        self.speaker: str | None = None
        self._levels_line = speakers_line(())  # nobody audible: nothing to say yet

    @property
    def active(self) -> bool:
        """Whether any pod reports levels (the room's timer need not run otherwise)."""
        return bool(self._nodes)

    @property
    def deciding(self) -> bool:
        return bool(self._nodes) and min(self._nodes) == self.node

    @staticmethod
    def report(sums: list[tuple[str, int, int]]) -> Levels:
        """A window's report from (publisher, loudness total, packets): the mean per
        publisher (0 without packets: muted, or Opus DTX in silence)."""
        return tuple((p, total // count if count else 0) for p, total, count in sums)

    def heard_levels(self, node: str, levels: Levels, now: float) -> None:
        """A pod's report (``SpeakerLevels``), ours included."""
        det = self.detector
        pubs = frozenset(p for p, _ in levels)
        previous = self._nodes.get(node)
        if previous is not None:
            for gone in previous[1] - pubs:
                det.remove(gone)
        self._nodes[node] = (now, pubs)
        for publisher, value in levels:
            det.add(publisher)
            det.level(publisher, max(0, min(127, value)))

    def publisher_left(self, publisher_id: str) -> None:
        self.detector.remove(publisher_id)
        if self.speaker == publisher_id:
            self.speaker = None

    def tick(self, now: float) -> tuple[str, Levels] | None:
        """Every :data:`WINDOW`: move the scores; if this pod decides and the decision is new
        (or due to be repeated), the ``(speaker, levels)`` to publish, else None."""
        det = self.detector
        for node, (at, pubs) in list(self._nodes.items()):
            if now - at > NODE_STALE:
                del self._nodes[node]
                for publisher in pubs:
                    det.remove(publisher)
        decide = self.deciding
        changed = det.tick(now, decide=decide)
        if not decide:
            return None
        floor = det.floor
        levels = tuple(
            (p, round(score) - 127) for p, score in det.levels()[:MAX_LISTED] if score >= floor
        )
        decision = (det.dominant or "", levels)
        since = now - self._sent_at
        if (
            changed is not None
            or (decision != self._sent and since >= LEVELS_INTERVAL)
            or since >= REPEAT_INTERVAL
        ):
            self._sent = decision
            self._sent_at = now
            return decision
        return None

    def heard_decision(self, speaker: str, levels: Levels, now: float) -> list[str]:
        """The decider's ``ActiveSpeaker`` (ours included): the lines for local subscribers."""
        lines = []
        # A speaker we do not track has left (its PubLeft crossed this decision on the bus)
        # or its pod's reports have not reached us yet: the decider repeats itself anyway.
        if speaker and speaker in self.detector:
            self.detector.follow(speaker, now)
            if speaker != self.speaker:
                self.speaker = speaker
                lines.append(speaker_line(speaker))
        line = speakers_line(tuple(item for item in levels if item[0] in self.detector))
        if line != self._levels_line and now - self._levels_sent_at >= LEVELS_INTERVAL / 2:
            self._levels_line = line
            self._levels_sent_at = now
            lines.append(line)
        return lines
