"""Dynacast: a simulcast publisher encodes only the streams some subscriber needs (issue 11).

An encoder spends CPU and uplink on every simulcast stream it sends; a stream no subscriber on
any pod is forwarded (or about to be switched to) is waste. Each simulcast
:class:`~trio_sfu.sfu.track.PublishedTrack` keeps a :class:`LayerDemand`: from the set of
streams needed now (every forwarding group's current and target stream, the top stream for
subscribers waiting at the keyframe gate and for other pods while the relay carries it) it
decides which streams the publisher should send, and the publisher is told with
``LAYERS <TRACK> <rid>,…`` on its data channel (the site's module applies it with
``RTCRtpSender.setParameters``, ``encodings[i].active``). A publisher that ignores the hint
loses nothing: it keeps sending everything, as before.

A stream is resumed as soon as it is needed (the encoder starts it with a keyframe, which is
what the waiting group or subscriber needs anyway) and paused only after it has been unneeded
for :data:`PAUSE_AFTER` seconds, so a subscriber moving between layers, or a short gap between
one viewer leaving and another joining, does not make the encoder stop and restart a stream.
Sans-IO: sets of stream indexes and times in, the set to announce out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Seconds a stream must be unneeded before the publisher is told to stop encoding it.
PAUSE_AFTER = 5.0


class LayerDemand:
    """Which of a simulcast track's streams (0 = lowest) the publisher should send."""

    __slots__ = ("_unneeded_since", "active", "rids")

    def __init__(self, rids: Sequence[str]) -> None:
        self.rids = tuple(rids)
        #: what the publisher was last told to send; at first what its offer announced (all)
        self.active: frozenset[int] = frozenset(range(len(self.rids)))
        self._unneeded_since: dict[int, float] = {}

    def update(self, needed: Iterable[int], now: float) -> frozenset[int] | None:
        """The streams to announce, or None when the announcement stands. ``needed``: the
        streams some subscriber is forwarded or waits for now."""
        wanted = set(needed)
        active = set(self.active)
        for stream in range(len(self.rids)):
            if stream in wanted:
                self._unneeded_since.pop(stream, None)
                active.add(stream)
            elif now - self._unneeded_since.setdefault(stream, now) >= PAUSE_AFTER:
                active.discard(stream)
        frozen = frozenset(active)
        if frozen == self.active:
            return None
        self.active = frozen
        return frozen

    def missing(self, stream: int) -> bool:
        """Whether ``stream`` is needed but the publisher was told not to send it."""
        return 0 <= stream < len(self.rids) and stream not in self.active

    def announced_rids(self) -> tuple[str, ...]:
        """The rids of :attr:`active`, lowest first (what ``LAYERS`` lists)."""
        return tuple(rid for i, rid in enumerate(self.rids) if i in self.active)
