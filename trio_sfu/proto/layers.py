"""Simulcast/SVC layer selection for one forwarding group (sans-IO, no Trio, no allocation).

A *forwarding group* is one track at one layer choice: every subscriber in it receives the
same packets with the same sequence numbers and timestamps, so a group owns exactly one
:class:`LayerSelector` and only the SSRC, transport-cc number and SRTP differ per subscriber.

The selector sees every incoming packet of the track (all simulcast streams) as plain ints
and bools, decides forward/drop, and for forwarded packets leaves the output sequence number
and timestamp in :attr:`LayerSelector.seq` / :attr:`LayerSelector.ts`:

- **Simulcast streams** (RFC 8853; one SSRC/RID per stream) are independent encodings, so a
  switch to another stream (up or down) happens only at the first packet of a keyframe of
  the target stream. While waiting, :meth:`LayerSelector.keyframe_request` says which stream
  to send a PLI for, at most once per ``keyframe_interval``. A switch *down* keeps the old
  stream flowing until the keyframe arrives but at most ``down_timeout`` seconds: then the
  group pauses (the link is assumed unable to carry the higher layer) until it does.
- **Spatial layers** inside one stream (VP9/AV1 SVC): packets with a spatial id above the
  limit are dropped; the limit goes down at any frame start, and up only at a keyframe
  (``L3T3_KEY`` style: upper spatial layers depend on each other only within a keyframe).
- **Temporal layers** (VP8 TID, VP9 TID, AV1 temporal id): packets above the limit are
  dropped; the limit goes down at any frame start and up one layer at a time, at a
  layer-sync frame of exactly that layer (RFC 7741 §4.2 ``Y`` bit; VP9 ``U`` switching-up
  point; AV1 frames whose template allows switching) or at once on a keyframe.

Limits change only at frame starts, so a frame is forwarded whole or not at all (no partial
frame reaches a decoder). Output sequence numbers close over every dropped packet and across
stream switches (``seq`` of the first packet after a switch is the previous output + 1), so a
subscriber sees gaps only where packets were really lost upstream; output timestamps jump
across a switch by the wall-clock time elapsed (at least one tick), never backwards.

A late packet (older than the newest seen on the forwarded stream: reordered, or a
retransmission the SFU asked the publisher for) is forwarded only while nothing of the stream
has been dropped since it was switched to, so its output number (input + offset) is
unambiguous; it does not move :attr:`LayerSelector.seq`/:attr:`LayerSelector.ts` (those stay
the newest) and sets :attr:`LayerSelector.late`. Once layers were dropped a late packet is
dropped too: the subscriber's NACK (mapped back by the rewriter's history) recovers it.
Duplicates of the newest packet are always dropped.
"""

from __future__ import annotations

from typing import Final

from trio_sfu.proto.rtp.packet import seq_delta

__all__ = ["NO_LIMIT", "LayerSelector"]

NO_LIMIT: Final = 255
"""A spatial/temporal limit that forwards every layer."""

_SEQ_MASK: Final = 0xFFFF
_TS_MASK: Final = 0xFFFFFFFF


#: the slots of :class:`LayerSelector`, which its ``clone`` copies (a class compiled by mypyc
#: has no ``__slots__`` to read at run time: docs/architecture.md, "Compiled")
_SELECTOR_FIELDS: Final = (
    "_clean",
    "_clock_rate",
    "_down_deadline",
    "_down_timeout",
    "_first_in_seq",
    "_keyframe_interval",
    "_last_in_seq",
    "_last_request",
    "_last_time",
    "_seq_offset",
    "_started",
    "_ts_offset",
    "current",
    "late",
    "seq",
    "spatial",
    "target_spatial",
    "target_stream",
    "target_temporal",
    "temporal",
    "ts",
)


class LayerSelector:
    """Forward/drop decisions and continuous numbering for one forwarding group.

    Call :meth:`set_target` when the allocator or a client hint changes the group's choice,
    :meth:`push` for every incoming packet of the track, and :meth:`keyframe_request`
    after pushes (or on a timer) to learn which stream needs a PLI/FIR.
    """

    __slots__ = _SELECTOR_FIELDS

    def __init__(
        self,
        clock_rate: int = 90000,
        *,
        keyframe_interval: float = 0.5,
        down_timeout: float = 1.0,
    ) -> None:
        self._clock_rate = clock_rate
        self._keyframe_interval = keyframe_interval
        self._down_timeout = down_timeout
        self.target_stream: int | None = None
        self.target_spatial = NO_LIMIT
        self.target_temporal = NO_LIMIT
        self.current: int | None = None
        """The stream being forwarded, or None while paused/waiting for a keyframe."""
        self.spatial = 0
        self.temporal = 0
        self.seq = 0
        """Output sequence number of the last forwarded packet."""
        self.ts = 0
        """Output timestamp of the last forwarded packet."""
        self.late = False
        """Whether the last forwarded packet was a late one (see the module docstring)."""
        self._started = False
        self._clean = True
        self._first_in_seq = 0
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_in_seq = 0
        self._last_time = 0.0
        self._last_request = float("-inf")
        self._down_deadline = float("inf")

    def clone(self) -> LayerSelector:
        """An independent copy: a subscriber leaving its forwarding group for another choice
        continues from exactly this state, so its numbering has no glitch at the split."""
        twin = LayerSelector(self._clock_rate)
        for name in _SELECTOR_FIELDS:
            setattr(twin, name, getattr(self, name))
        return twin

    # -- control ---------------------------------------------------------------------------

    def set_target(
        self,
        stream: int | None,
        spatial: int = NO_LIMIT,
        temporal: int = NO_LIMIT,
        *,
        now: float,
    ) -> None:
        """Choose the stream (simulcast index, 0 = lowest; None = off) and layer limits.

        Streams are ordered by quality, so a lower index than the current one is a switch
        down and gets the ``down_timeout`` bound.
        """
        if stream != self.target_stream:
            self._down_deadline = (
                now + self._down_timeout
                if stream is None or (self.current is not None and stream < self.current)
                else float("inf")
            )
            self._last_request = float("-inf")  # a new target asks at once
        self.target_stream = stream
        self.target_spatial = spatial
        self.target_temporal = temporal

    def adopt(self, stream: int, seq: int, ts: int, now: float) -> None:
        """Take over a stream that was being forwarded whole up to input ``seq``/``ts``
        (a subscriber of an SVC track getting a layer limit of its own): no keyframe wait,
        and the numbering goes on unchanged (offsets 0) until packets are dropped."""
        self.current = stream
        self._started = True
        self._seq_offset = self._ts_offset = 0
        self._last_in_seq = self._first_in_seq = seq & _SEQ_MASK
        self.seq = seq & _SEQ_MASK
        self.ts = ts & _TS_MASK
        self._last_time = now
        self._clean = True
        self.spatial = self.temporal = NO_LIMIT  # everything was forwarded so far
        self._down_deadline = float("inf")

    def numbering(self, seq: int, ts: int) -> tuple[int, int]:
        """The output sequence number and timestamp of the packet :meth:`push` just
        accepted (for a late one too, unlike :attr:`seq`/:attr:`ts`)."""
        return (seq + self._seq_offset) & _SEQ_MASK, (ts + self._ts_offset) & _TS_MASK

    def resync(self) -> None:
        """Forget the current stream (after a pause, or a change of source): forwarding
        starts again at the target's next keyframe, numbering continuing from the last."""
        self.current = None
        self._last_request = float("-inf")

    def waiting(self) -> bool:
        """Whether a keyframe is needed: another stream, or a higher spatial layer."""
        target = self.target_stream
        if target is None:
            return False
        return target != self.current or self.target_spatial > self.spatial

    def next_request(self) -> float:
        """When :meth:`keyframe_request` will next name a stream (inf: nothing to wait for)."""
        if not self.waiting():
            return float("inf")
        return self._last_request + self._keyframe_interval

    def keyframe_request(self, now: float) -> int | None:
        """The stream to request a keyframe of (PLI/FIR), throttled; None if none is due."""
        if not self.waiting() or now - self._last_request < self._keyframe_interval:
            return None
        self._last_request = now
        return self.target_stream

    # -- per packet ------------------------------------------------------------------------

    def push(
        self,
        stream: int,
        spatial: int,
        temporal: int,
        seq: int,
        ts: int,
        keyframe: bool,
        frame_start: bool,
        layer_sync: bool,
        now: float,
        switch_up_to: int = -1,
    ) -> bool:
        """Decide one packet; True means forward it with :attr:`seq`/:attr:`ts`.

        ``keyframe`` is true only on the first packet of a keyframe (what the codec
        detectors in :mod:`trio_sfu.proto.codecs` report); ``frame_start`` on the first
        packet of every frame (of every spatial layer frame for SVC); ``layer_sync`` when
        the frame is a temporal switching-up point; ``switch_up_to`` the highest temporal
        layer whose decoding may start at this frame (the AV1 dependency descriptor's
        "switch" indications, which may sit on a lower layer's frame; -1: none).
        """
        if stream != self.current:
            if not (stream == self.target_stream and keyframe and frame_start):
                return False
            self._switch(stream, seq, ts, now)
        else:
            # The next number (the common case) costs no call; any other is placed by
            # seq_delta: after a gap it goes on as usual, the newest again is dropped.
            if seq != (self._last_in_seq + 1) & _SEQ_MASK and (
                diff := seq_delta(seq, self._last_in_seq)
            ) <= 0:
                if diff == 0:
                    return False  # a duplicate of the newest
                # Late (see the module docstring): forwarded only while its number is sure,
                # and never one from before the switch to this stream.
                if (
                    not self._clean
                    or seq_delta(seq, self._first_in_seq) < 0
                    or spatial > self.spatial
                    or temporal > self.temporal
                ):
                    return False
                self.late = True
                return True
            self._last_in_seq = seq
            if frame_start:
                target = self.target_stream
                if target is None or (target < stream and now >= self._down_deadline):
                    # Off, or the lower stream's keyframe is overdue: pause at this frame
                    # boundary; the dropped packet is closed over on resume.
                    self.current = None
                    self._clean = False
                    return False
                self._frame_limits(temporal, keyframe, layer_sync, switch_up_to)
            if spatial > self.spatial or temporal > self.temporal:
                self._seq_offset -= 1  # close the gap the dropped packet would leave
                self._clean = False
                return False
        self.late = False
        self.seq = (seq + self._seq_offset) & _SEQ_MASK
        self.ts = (ts + self._ts_offset) & _TS_MASK
        self._last_time = now
        return True

    def _switch(self, stream: int, seq: int, ts: int, now: float) -> None:
        """Start forwarding ``stream`` at a keyframe, continuing the output numbering."""
        if self._started:
            out_seq = (self.seq + 1) & _SEQ_MASK
            ticks = max(1, round((now - self._last_time) * self._clock_rate))
            out_ts = (self.ts + ticks) & _TS_MASK
        else:
            out_seq, out_ts = seq, ts
            self._started = True
        self._seq_offset = out_seq - seq
        self._ts_offset = out_ts - ts
        self._last_in_seq = self._first_in_seq = seq
        self._clean = True
        self.current = stream
        self.spatial = self.target_spatial
        self.temporal = self.target_temporal
        self._down_deadline = float("inf")

    def _frame_limits(
        self, temporal: int, keyframe: bool, layer_sync: bool, switch_up_to: int = -1
    ) -> None:
        """Move the spatial/temporal limits at a frame start (see the module docstring)."""
        if keyframe:
            self.spatial = self.target_spatial
            self.temporal = self.target_temporal
            return
        if self.target_spatial < self.spatial:
            self.spatial = self.target_spatial
        if self.target_temporal < self.temporal:
            self.temporal = self.target_temporal
        elif layer_sync and temporal == self.temporal + 1 and temporal <= self.target_temporal:
            self.temporal = temporal
        elif switch_up_to > self.temporal:
            self.temporal = min(switch_up_to, self.target_temporal)
