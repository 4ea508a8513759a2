"""Receive side of transport-wide congestion control (sans-IO).

Browsers estimate their upload bandwidth from our feedback: which transport-wide sequence
numbers arrived and when (draft-holmer-rmcat-transport-wide-cc-extensions-01). Without it a
publisher's estimate never ramps up and simulcast's high layers never start. The recorder keeps
arrival times, and every ~50 ms the driver asks it for feedback packets; it follows libwebrtc's
receive side closely, because Chromium is the consumer that must accept the result:

* the reference time is the first received packet's arrival floored to 64 ms, and the first
  delta is relative to it, later deltas to the previous received packet (§3.1);
* deltas are computed from absolute 250 µs ticks, so rounding never accumulates;
* a feedback packet always ends with a received packet, and a packet that arrives after its
  sequence number was reported lost rewinds the window, so it is reported again, received.
"""

from __future__ import annotations

from typing import Final

from trio_sfu.proto.rtcp.transport_cc import DELTA_US, PacketStatus, TransportCcFeedback
from trio_sfu.proto.rtp import SequenceUnwrapper

__all__ = ["TwccRecorder"]

_TICKS_PER_SECOND: Final = 1_000_000 // DELTA_US  # 4000
_TICKS_PER_REFERENCE: Final = 256  # 64 ms
_HISTORY: Final = 512  # reported packets kept so a late arrival can rewind the window
_MAX_RANGE: Final = 0x3FFF  # never report more sequence numbers than this in one build


class TwccRecorder:
    """Arrival times of one transport's packets, turned into transport-cc feedback.

    ``interval`` is the feedback period in seconds (libwebrtc uses 50-250 ms depending on
    bitrate; 50 ms keeps browser estimates responsive). ``max_size`` bounds each RTCP
    packet in bytes so feedback fits a datagram next to SRTCP overhead.
    """

    __slots__ = (
        "_arrivals",
        "_due",
        "_fb_count",
        "_highest",
        "_interval",
        "_last_build",
        "_lowest",
        "_max_size",
        "_next",
        "_unwrapper",
    )

    def __init__(self, *, interval: float = 0.05, max_size: int = 1200) -> None:
        if max_size < 64:
            raise ValueError("max_size must leave room for at least a few statuses")
        self._interval = interval
        self._max_size = max_size
        self._unwrapper = SequenceUnwrapper()
        self._arrivals: dict[int, int] = {}  # extended sequence → arrival in 250 µs ticks
        self._next: int | None = None  # first extended sequence not yet reported
        self._highest = -1
        self._lowest: int | None = None  # no key of _arrivals is below it (trims start there)
        self._fb_count = 0
        self._last_build: float | None = None
        self._due: float | None = None

    def record(self, transport_seq: int, arrival: float) -> float | None:
        """Note one received packet's transport-wide sequence number and arrival time (s).
        Returns :meth:`get_timer` (the caller on the packet path need not call it too)."""
        ext = self._unwrapper.unwrap(transport_seq & 0xFFFF)
        arrivals = self._arrivals
        if ext in arrivals:
            return self._due  # a duplicate keeps its first arrival
        if self._next is None:
            self._next = ext
        elif ext < self._next:
            if ext < self._next - _HISTORY:
                return self._due  # too late to matter to the sender's estimator
            self._next = ext  # reported lost already: report it again, received
        arrivals[ext] = round(arrival * _TICKS_PER_SECOND)
        if ext > self._highest:
            self._highest = ext
        lowest = self._lowest
        if lowest is None or ext < lowest:
            self._lowest = ext
        due = self._due
        if due is None:
            last = self._last_build
            self._due = due = arrival + self._interval if last is None else last + self._interval
        return due

    def get_timer(self) -> float | None:
        """When :meth:`build_feedback` should next run, or None while nothing is pending."""
        return self._due

    def build_feedback(
        self, now: float, sender_ssrc: int, media_ssrc: int
    ) -> list[TransportCcFeedback]:
        """Feedback for everything recorded since the last call (empty if nothing new)."""
        self._last_build = now
        self._due = None
        start = self._next
        if start is None or start > self._highest:
            return []
        highest = self._highest
        start = max(start, highest - _MAX_RANGE)
        arrivals = self._arrivals
        if highest - start < 4 * len(arrivals):
            # The usual case: the new numbers are (nearly) all there, so look each one up
            # instead of scanning the whole history (one build per ~50 ms, issue 10).
            get = arrivals.get
            received = [
                (ext, t) for ext in range(start, highest + 1) if (t := get(ext)) is not None
            ]
        else:
            received = sorted((ext, ticks) for ext, ticks in arrivals.items() if ext >= start)
        out: list[TransportCcFeedback] = []
        segment: list[tuple[int, int]] = []
        base = start
        for ext, ticks in received:
            # A delta must fit 16 signed bits of 250 µs (±8.19 s); otherwise start afresh.
            if segment and not -0x8000 <= ticks - segment[-1][1] <= 0x7FFF:
                base = self._emit(out, base, segment, sender_ssrc, media_ssrc)
                segment = []
            segment.append((ext, ticks))
        if segment:
            self._emit(out, base, segment, sender_ssrc, media_ssrc)
        self._next = highest + 1
        floor = self._next - _HISTORY
        lowest = self._lowest if self._lowest is not None else floor
        if floor - lowest <= len(arrivals):
            for ext in range(lowest, floor):
                arrivals.pop(ext, None)
        else:  # a jump in the numbering: fewer keys than numbers to try
            for ext in [e for e in arrivals if e < floor]:
                del arrivals[ext]
        if floor > lowest:
            self._lowest = floor
        return out

    def _emit(
        self,
        out: list[TransportCcFeedback],
        base: int,
        segment: list[tuple[int, int]],
        sender_ssrc: int,
        media_ssrc: int,
    ) -> int:
        """Append feedback covering ``base`` .. the segment's last packet; return the next base.

        Halves the segment (at a received packet) until each part fits ``max_size``.
        """
        feedback = self._feedback(base, segment, sender_ssrc, media_ssrc)
        statuses = len(feedback.packets)
        if len(segment) > 1 and (
            statuses > 0xFFFF
            or (
                4 + _size_bound(statuses) > self._max_size
                and 4 + _estimated_size(feedback) > self._max_size
            )
        ):
            half = len(segment) // 2
            base = self._emit(out, base, segment[:half], sender_ssrc, media_ssrc)
            return self._emit(out, base, segment[half:], sender_ssrc, media_ssrc)
        feedback.fb_pkt_count = self._fb_count
        self._fb_count = (self._fb_count + 1) & 0xFF
        out.append(feedback)
        return segment[-1][0] + 1

    @staticmethod
    def _feedback(
        base: int, segment: list[tuple[int, int]], sender_ssrc: int, media_ssrc: int
    ) -> TransportCcFeedback:
        reference = segment[0][1] // _TICKS_PER_REFERENCE
        previous = reference * _TICKS_PER_REFERENCE
        packets: list[PacketStatus] = []
        seq = base
        for ext, ticks in segment:
            while seq < ext:
                packets.append((seq & 0xFFFF, False, None))
                seq += 1
            packets.append((ext & 0xFFFF, True, (ticks - previous) * DELTA_US))
            previous = ticks
            seq = ext + 1
        # §3.1: a signed 24-bit field; the receiver unwraps it (libwebrtc's GetBaseDelta).
        wire_reference = ((reference + 0x800000) & 0xFFFFFF) - 0x800000
        return TransportCcFeedback(
            sender_ssrc, media_ssrc, base & 0xFFFF, wire_reference, 0, packets
        )


def _size_bound(statuses: int) -> int:
    """An upper bound of a feedback packet's size: 20 bytes of headers, at most one 2-byte
    chunk and one 2-byte delta per status, 3 of padding (§3.1). Within ``max_size`` there is
    no need to serialize it to know (most builds: 15 statuses per 50 ms at 300 packets/s)."""
    return 23 + 4 * statuses


def _estimated_size(feedback: TransportCcFeedback) -> int:
    # Serializing is exact; only for a feedback the bound does not settle.
    return len(feedback.serialize())
