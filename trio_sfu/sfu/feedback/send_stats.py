"""Sending statistics of one outgoing RTP stream, for the SRs the SFU sends its subscribers.

RTCP is terminated per leg (issue 3): towards a subscriber the SFU is the sender, so it reports
its own packet and octet counts and its own RTP-timestamp-to-wallclock mapping (RFC 3550
§6.4.1), which the subscriber needs for lip sync and to compute its RTT-based statistics, and it
learns the round-trip time from the subscriber's receiver reports.
"""

from __future__ import annotations

from typing import Final

from trio_sfu.proto.rtcp import (
    ReportBlock,
    SenderReport,
    compact_ntp,
    ntp_time,
    round_trip_time,
)

__all__ = ["SendStatistics"]

_SR_HISTORY: Final = 16  # sent SRs remembered to recognise the LSR of a receiver report


class SendStatistics:
    """Counters and the timestamp mapping of one outgoing SSRC.

    The mapping is taken from the first packet sent with each new (later) RTP timestamp:
    that packet left closest to the time the timestamp stands for, while the rest of a video
    frame's burst and reordered older packets would skew it.
    """

    __slots__ = (
        "_clock_rate",
        "_last_time",
        "_last_ts",
        "_sent",
        "_started",
        "last_report",
        "octets",
        "packets",
        "rtt",
    )

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("clock rate must be positive")
        self._clock_rate = clock_rate
        self._started = False
        self._last_ts = 0
        self._last_time = 0.0
        self._sent: dict[int, float] = {}  # compact NTP of a sent SR → monotonic send time
        self.packets = 0
        self.octets = 0
        self.rtt: float | None = None
        self.last_report: ReportBlock | None = None

    def update(self, rtp_ts: int, size: int, now: float) -> None:
        """Account one sent packet: its RTP timestamp, payload octets and send time (s).

        ``size`` counts payload octets only, no header or padding (RFC 3550 §6.4.1).
        """
        self.packets += 1
        self.octets += size
        if self._started:
            delta = (rtp_ts - self._last_ts) & 0xFFFFFFFF
            if delta == 0 or delta >= 0x80000000:
                return  # same frame, or an older timestamp sent late
        else:
            self._started = True
        self._last_ts = rtp_ts
        self._last_time = now

    def follow(self, source: SendStatistics, packets: int, octets: int) -> None:
        """Take the timestamp mapping of ``source`` with this stream's own counts.

        A forwarding group accounts each packet once for all its subscribers (issue 10); a
        subscriber's SR uses the group's mapping and the counts since it joined.
        """
        self._started = source._started
        self._last_ts = source._last_ts
        self._last_time = source._last_time
        self.packets = packets
        self.octets = octets

    def sender_report(self, ssrc: int, now: float, unix: float) -> SenderReport | None:
        """An SR for ``now`` (monotonic) = ``unix`` (wall clock); None before any packet.

        RFC 3550 §6.4.1: the RTP timestamp corresponds to the same instant as the NTP
        timestamp, extrapolated from the last mapping with the clock rate; the counts wrap
        modulo 2^32.
        """
        if not self._started:
            return None
        ticks = round((now - self._last_time) * self._clock_rate)
        msw, lsw = ntp_time(unix)
        sent = self._sent
        sent[compact_ntp(msw, lsw)] = now
        if len(sent) > _SR_HISTORY:
            del sent[next(iter(sent))]
        return SenderReport(
            ssrc=ssrc,
            ntp_msw=msw,
            ntp_lsw=lsw,
            rtp_timestamp=(self._last_ts + ticks) & 0xFFFFFFFF,
            packet_count=self.packets & 0xFFFFFFFF,
            octet_count=self.octets & 0xFFFFFFFF,
        )

    def on_receiver_report(self, block: ReportBlock, now: float, unix: float) -> float | None:
        """Take a report block on this stream; returns the round-trip time (s) it gives, if any.

        RFC 3550 §6.4.1: RTT = A - LSR - DLSR, A being the report's arrival. When LSR is one
        of our recent SRs, A - LSR is measured on the monotonic clock (``now`` minus the SR's
        send time), which a wall-clock step cannot corrupt; otherwise from ``unix`` as the RFC
        writes it. None when the block echoes no SR yet or the result is negative.
        """
        self.last_report = block
        lsr = block.lsr
        if lsr == 0:
            return None
        sent_at = self._sent.get(lsr)
        if sent_at is None:
            rtt = round_trip_time(compact_ntp(*ntp_time(unix)), lsr, block.dlsr)
        else:
            measured = now - sent_at - block.dlsr / 65536
            rtt = measured if measured >= 0 else None
        if rtt is not None:
            self.rtt = rtt
        return rtt
