"""Reception statistics of one incoming RTP stream, for the receiver reports a receiver sends.

Receive side of RFC 3550's reception reports (sans-IO): the report block of §6.4.1, following
the reference code of appendix A.1 (sequence validation), A.3 (expected and lost counts) and
A.8 (interarrival jitter). Two receivers use it: the SFU, which terminates RTCP per leg
(issue 3) and reports on every publisher stream itself, and the load tester's subscribers,
which report on what the SFU sends them as a browser would. It lives here, below both, so
the two report with the same arithmetic.
"""

from __future__ import annotations

from typing import Final

from trio_sfu.proto.rtcp import ReportBlock, compact_ntp, seconds_to_compact
from trio_sfu.proto.rtp.packet import seq_delta

__all__ = ["ReceiveStatistics"]

# RFC 3550 A.1
_MAX_DROPOUT: Final = 3000
_MAX_MISORDER: Final = 100
_SEQ_MOD: Final = 1 << 16


class ReceiveStatistics:
    """Counters of one incoming SSRC and the report block that describes them.

    :meth:`update` runs once per received packet (a handful of integer operations); the rest
    runs once per report. A.1's probation of new sources is left out: SRTP already
    authenticated the packet (a load-test sink that skips SRTP reads only its SFU's address),
    so its source is not in doubt. Jitter follows A.8, fed only
    by in-order packets that start a new timestamp as libwebrtc does, so the packets of one
    video frame (same timestamp, sent in a burst) do not dilute it.

    No round-trip time here: RFC 3550 only lets the sender of an SR measure it (the SFU's
    publisher leg times its NACKs with the transport's SCTP SRTT instead).
    """

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_clock_rate",
        "_cycles",
        "_expected_prior",
        "_jitter",
        "_last_arrival",
        "_last_ts",
        "_lsr",
        "_max_seq",
        "_received_prior",
        "_sr_arrival",
        "_started",
        "_timed",
        "received",
    )

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("clock rate must be positive")
        self._clock_rate = clock_rate
        self._started = False
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._bad_seq = -1
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._timed = False  # whether _last_ts/_last_arrival hold a reference packet
        self._last_ts = 0
        self._last_arrival = 0.0
        self._lsr = 0
        self._sr_arrival = 0.0
        self.received = 0  # packets received, duplicates included (RFC 3550 A.3)

    def _init_seq(self, seq: int) -> None:
        # RFC 3550 A.1 init_seq
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = -1
        self._cycles = 0
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._timed = False

    def update(self, seq: int, rtp_ts: int, arrival: float) -> None:
        """Account one received packet: its sequence number, RTP timestamp and arrival (s)."""
        seq &= 0xFFFF
        in_order = False
        if not self._started:
            self._started = True
            self._init_seq(seq)
        else:
            max_seq = self._max_seq
            # in order, the common case, without a call
            delta = 1 if seq == (max_seq + 1) & 0xFFFF else seq_delta(seq, max_seq)
            if 0 < delta < _MAX_DROPOUT:  # in order, possibly after a gap
                if seq < max_seq:
                    self._cycles += _SEQ_MOD  # wrapped
                self._max_seq = seq
                in_order = True
            elif delta >= _MAX_DROPOUT or delta <= -_MAX_MISORDER:
                # A very large jump: believe it only if the next packet follows it (A.1).
                if seq != self._bad_seq:
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return
                self._init_seq(seq)
            # else: a duplicate (0) or reordered packet, counted as received (A.1), not timed
        self.received += 1
        if not self._timed:
            self._timed = True
            self._last_ts = rtp_ts
            self._last_arrival = arrival
        elif in_order and rtp_ts != self._last_ts:
            # RFC 3550 A.8: D = (Rj - Ri) - (Sj - Si) in RTP units; J += (|D| - J) / 16.
            # The timestamp difference is taken modulo 2^32 so a timestamp wrap is no jump.
            ts_delta = (rtp_ts - self._last_ts) & 0xFFFFFFFF
            if ts_delta >= 0x80000000:
                ts_delta -= 0x100000000
            d = (arrival - self._last_arrival) * self._clock_rate - ts_delta
            if d < 0:
                d = -d
            self._jitter += (d - self._jitter) / 16
            self._last_ts = rtp_ts
            self._last_arrival = arrival

    @property
    def started(self) -> bool:
        """Whether any packet was received (RFC 3550 §6.4: report only on sources heard)."""
        return self._started

    @property
    def extended_highest(self) -> int:
        """Extended highest sequence number received (cycles + highest, RFC 3550 A.3)."""
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets expected: extended highest - base + 1 (RFC 3550 A.3)."""
        return self._cycles + self._max_seq - self._base_seq + 1 if self._started else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost; negative when duplicates outnumber losses (RFC 3550 A.3)."""
        return self.expected - self.received

    @property
    def jitter(self) -> float:
        """Interarrival jitter in RTP timestamp units (RFC 3550 A.8)."""
        return self._jitter

    def on_sender_report(self, ntp_msw: int, ntp_lsw: int, now: float) -> None:
        """Remember the last SR of this source, for LSR and DLSR (RFC 3550 §6.4.1)."""
        self._lsr = compact_ntp(ntp_msw, ntp_lsw)
        self._sr_arrival = now

    def report_block(self, ssrc: int, now: float) -> ReportBlock:
        """The report block on this source; starts a new interval for ``fraction_lost``.

        ``ssrc`` is the source's SSRC (the block names the stream it reports on). Callers
        skip sources with :attr:`started` False.
        """
        expected = self.expected
        received = self.received
        # RFC 3550 A.3: loss over the interval since the previous report.
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (received - self._received_prior)
        self._expected_prior = expected
        self._received_prior = received
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        # RFC 3550 §6.4.1: the cumulative count is a signed 24-bit field that saturates.
        lost = max(-0x800000, min(0x7FFFFF, expected - received))
        lsr = self._lsr
        dlsr = seconds_to_compact(now - self._sr_arrival) if lsr else 0
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=fraction,
            packets_lost=lost,
            highest_sequence=self.extended_highest & 0xFFFFFFFF,
            jitter=int(self._jitter),
            lsr=lsr,
            dlsr=dlsr,
        )
