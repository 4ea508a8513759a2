"""Outbound half of an association: send queue, TSN assignment, SACK processing, retransmission,
RTO, congestion control and partial reliability (RFC 9260 §6-7, RFC 3758 §3.5).

TSNs are kept *unwrapped* (plain growing Python ints) so that every comparison is an ordinary
``<``; only the wire encoding masks them to 32 bits. TSNs are assigned lazily, when a fragment is
put into a packet: a message that expires while still queued never consumes a TSN, and the
fragments of one message always get consecutive TSNs, as plain DATA chunks require (§6.9).
"""

from __future__ import annotations

import heapq
import struct
from collections import deque

from .chunks import (
    COMMON_HEADER_SIZE,
    DATA,
    DATA_HEADER_SIZE,
    FLAG_BEGIN,
    FLAG_END,
    FLAG_UNORDERED,
    ForwardTsnChunk,
    SackChunk,
)
from .packer import PacketBuilder

U32 = 0xFFFFFFFF
_DATA_HEADER = struct.Struct("!BBHIHHI")
_MIN_SPLIT = 256  # don't start a fragment in a packet with less room than this; open a new one


def unwrap32(value: int, ref: int) -> int:
    """The unwrapped TSN closest to ``ref`` whose low 32 bits are ``value`` (serial numbers)."""
    return ref + ((value - ref + 0x80000000) & U32) - 0x80000000


class OutMessage:
    __slots__ = (
        "abandoned",
        "chunks",
        "data",
        "expiry",
        "max_retransmits",
        "offset",
        "ppid",
        "ssn",
        "stream_id",
        "unordered",
    )

    def __init__(
        self,
        stream_id: int,
        ppid: int,
        data: memoryview,
        unordered: bool,
        max_retransmits: int | None,
        expiry: float | None,
    ) -> None:
        self.stream_id = stream_id
        self.ppid = ppid
        self.data = data
        self.unordered = unordered
        self.max_retransmits = max_retransmits
        self.expiry = expiry
        self.ssn = 0
        self.offset = 0
        self.abandoned = False
        self.chunks: list[SentChunk] = []


class SentChunk:
    __slots__ = (
        "abandoned",
        "acked",
        "encoded",
        "fast_retransmitted",
        "in_flight",
        "misses",
        "msg",
        "retransmit",
        "sent_at",
        "sent_count",
        "size",
        "tsn",
    )

    def __init__(self, tsn: int, msg: OutMessage, size: int, encoded: bytes, now: float) -> None:
        self.tsn = tsn
        self.msg = msg
        self.size = size
        self.encoded = encoded
        self.sent_at = now
        self.sent_count = 1
        self.acked = False
        self.abandoned = False
        self.retransmit = False
        self.in_flight = True
        self.misses = 0
        self.fast_retransmitted = False

    def __lt__(self, other: SentChunk) -> bool:  # for the retransmission heap
        return self.tsn < other.tsn


class OutStream:
    __slots__ = ("buffered", "next_ssn", "queue")

    def __init__(self) -> None:
        self.next_ssn = 0
        self.queue: deque[OutMessage] = deque()
        self.buffered = 0


class Sender:
    """Everything about DATA we send; the association owns timers' meaning (error counting)."""

    # Slotted: past 30 attributes Python gives each instance its own ~1.6 KiB dict (issue 10, memory
    # per idle peer).
    __slots__ = (
        "_current", "_fast_burst", "_fwd_sent_adv", "_fwd_sent_at", "_gap_acked", "_placeholders",
        "_rr", "_rtx", "_rtx_pending", "adv_ack", "cum_ack", "cwnd", "data_chunks_sent",
        "fast_recovery_exit", "fast_retransmits", "flight", "forward_tsn_due", "max_payload",
        "messages_abandoned", "mtu", "next_tsn", "outstanding", "outstanding_bytes",
        "partial_bytes_acked", "partial_reliability", "peer_rwnd", "retransmissions", "rto",
        "rto_max", "rto_min", "rttvar", "srtt", "ssthresh", "streams", "t3", "t3_expirations",
    )

    def __init__(
        self,
        *,
        initial_tsn: int,
        peer_rwnd: int,
        mtu: int,
        partial_reliability: bool,
        rto_initial: float,
        rto_min: float,
        rto_max: float,
    ) -> None:
        self.mtu = mtu
        self.max_payload = mtu - COMMON_HEADER_SIZE - DATA_HEADER_SIZE
        self.partial_reliability = partial_reliability
        self.next_tsn = initial_tsn
        self.cum_ack = initial_tsn - 1
        self.adv_ack = self.cum_ack  # RFC 3758 Advanced.Peer.Ack.Point
        self.outstanding: deque[SentChunk] = deque()
        self.streams: dict[int, OutStream] = {}
        self._rr: deque[int] = deque()  # streams with queued messages, round robin
        self._current: OutMessage | None = None  # message being fragmented
        self._rtx: list[SentChunk] = []  # heap of chunks marked for retransmission
        self._rtx_pending = 0
        self._placeholders: list[SentChunk] = []
        self._fast_burst = False
        self._gap_acked = False
        # §7.2.1: initial cwnd and ssthresh.
        self.cwnd = min(4 * mtu, max(2 * mtu, 4380))
        self.ssthresh = peer_rwnd
        self.partial_bytes_acked = 0
        self.fast_recovery_exit: int | None = None
        self.flight = 0  # bytes in flight (sent, not acked, not marked lost)
        self.outstanding_bytes = 0  # bytes sent and not yet acknowledged or abandoned
        self.peer_rwnd = peer_rwnd
        # §6.3.1 RTO state.
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.rto = rto_initial
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.t3: float | None = None
        self.forward_tsn_due = False
        self._fwd_sent_adv = self.cum_ack
        self._fwd_sent_at = -1e18
        # counters
        self.data_chunks_sent = 0
        self.retransmissions = 0
        self.fast_retransmits = 0
        self.t3_expirations = 0
        self.messages_abandoned = 0

    # --- queueing --------------------------------------------------------------------------

    def enqueue(
        self,
        stream_id: int,
        ppid: int,
        data: bytes,
        *,
        unordered: bool,
        max_retransmits: int | None,
        lifetime: float | None,
        now: float,
    ) -> None:
        if not self.partial_reliability:
            max_retransmits = lifetime = None
        expiry = None if lifetime is None else now + lifetime
        st = self.streams.get(stream_id)
        if st is None:
            st = self.streams[stream_id] = OutStream()
        if not st.queue:
            self._rr.append(stream_id)
        st.queue.append(
            OutMessage(stream_id, ppid, memoryview(data), unordered, max_retransmits, expiry)
        )
        st.buffered += len(data)

    def adopt_queued(self, old: Sender) -> None:
        """Take over the messages ``old`` has not started sending (association restart)."""
        for sid in old._rr:
            for msg in old.streams[sid].queue:
                if not msg.abandoned:
                    self.enqueue(
                        sid, msg.ppid, bytes(msg.data), unordered=msg.unordered,
                        max_retransmits=msg.max_retransmits, lifetime=None, now=0.0,
                    )
                    self.streams[sid].queue[-1].expiry = msg.expiry

    def buffered_amount(self, stream_id: int) -> int:
        st = self.streams.get(stream_id)
        return st.buffered if st is not None else 0

    def drained(self, stream_id: int) -> bool:
        """True when every message of the stream has been given TSNs (needed before a reset)."""
        st = self.streams.get(stream_id)
        if st is None:
            return True
        cur = self._current
        return not st.queue and (cur is None or cur.stream_id != stream_id)

    def reset_stream(self, stream_id: int) -> None:
        """RFC 6525 §5.1.2: after a successful outgoing reset the stream restarts at SSN 0."""
        st = self.streams.get(stream_id)
        if st is not None:
            st.next_ssn = 0
            if not st.queue:
                del self.streams[stream_id]

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing awaiting acknowledgement, no FORWARD TSN pending."""
        return (
            self._current is None
            and not self._rr
            and self.outstanding_bytes == 0
            and self.adv_ack <= self.cum_ack
        )

    def has_data(self) -> bool:
        return self._current is not None or bool(self._rr) or self._rtx_pending > 0

    def can_send(self) -> bool:
        """Whether ``fill`` would put anything in a packet right now (cheap, conservative)."""
        if self._rtx_pending:
            return self.flight < self.cwnd or self._fast_burst
        return self.flight < self.cwnd and (self._current is not None or bool(self._rr))

    # --- transmission ----------------------------------------------------------------------

    def fill(self, pb: PacketBuilder, now: float) -> int:
        """Add retransmissions then new DATA to ``pb`` as cwnd and the peer's rwnd allow."""
        sent = self._send_retransmissions(pb, now) if self._rtx_pending else 0
        max_payload = self.max_payload
        while self.flight < self.cwnd:
            msg = self._current
            if msg is None:
                msg = self._next_message(now)
                if msg is None:
                    break
                self._current = msg
            elif msg.expiry is not None and now > msg.expiry:
                self._abandon(msg)
                self._flush_placeholders()  # before the next TSN is handed out
                continue
            remaining = len(msg.data) - msg.offset
            size = remaining if remaining < max_payload else max_payload
            # §6.1 rule A: respect the peer's window, but probe with one chunk when nothing flies.
            if size > self.peer_rwnd and self.flight > 0:
                break
            avail = pb.room - DATA_HEADER_SIZE
            if avail < size:
                if avail >= _MIN_SPLIT:
                    size = avail
                else:
                    pb.flush()
            st = self.streams[msg.stream_id]
            flags = 0
            if msg.offset == 0:
                flags = FLAG_BEGIN
                if not msg.unordered:
                    msg.ssn = st.next_ssn
                    st.next_ssn = (st.next_ssn + 1) & 0xFFFF
            end = msg.offset + size
            if end == len(msg.data):
                flags |= FLAG_END
                self._current = None
            if msg.unordered:
                flags |= FLAG_UNORDERED
            tsn = self.next_tsn
            self.next_tsn = tsn + 1
            encoded = (
                _DATA_HEADER.pack(
                    DATA, flags, DATA_HEADER_SIZE + size, tsn & U32, msg.stream_id, msg.ssn,
                    msg.ppid,
                )
                + msg.data[msg.offset : end]
            )
            msg.offset = end
            st.buffered -= size
            chunk = SentChunk(tsn, msg, size, encoded, now)
            msg.chunks.append(chunk)
            self.outstanding.append(chunk)
            self.flight += size
            self.outstanding_bytes += size
            self.peer_rwnd = max(0, self.peer_rwnd - size)
            pb.add(encoded)
            sent += 1
        self._flush_placeholders()
        if sent:
            self.data_chunks_sent += sent
            if self.t3 is None:
                self.t3 = now + self.rto  # §6.3.2 R1
        return sent

    def _next_message(self, now: float) -> OutMessage | None:
        rr = self._rr
        while rr:
            st = self.streams[rr[0]]
            msg = st.queue.popleft()
            if st.queue:
                rr.rotate(-1)
            else:
                rr.popleft()
            if msg.expiry is not None and now > msg.expiry:
                # Expired before any fragment left: nothing to tell the peer (RFC 3758 §3.5 A1).
                st.buffered -= len(msg.data)
                self.messages_abandoned += 1
                continue
            return msg
        return None

    def _send_retransmissions(self, pb: PacketBuilder, now: float) -> int:
        sent = 0
        burst = self.mtu - COMMON_HEADER_SIZE if self._fast_burst else 0
        self._fast_burst = False
        heap = self._rtx
        while heap:
            c = heap[0]
            if not c.retransmit:
                heapq.heappop(heap)
                continue
            if self._should_abandon(c, now):
                heapq.heappop(heap)
                self._abandon(c.msg)
                self._flush_placeholders()
                continue
            wire = len(c.encoded) + ((4 - (len(c.encoded) & 3)) & 3)
            if self.flight >= self.cwnd:
                # §7.2.4: the first packet of a fast retransmit ignores cwnd.
                if wire > burst:
                    break
                burst -= wire
            heapq.heappop(heap)
            c.retransmit = False
            self._rtx_pending -= 1
            c.sent_count += 1
            c.sent_at = now
            c.in_flight = True
            self.flight += c.size
            pb.add(c.encoded)
            sent += 1
        self._flush_placeholders()
        self.retransmissions += sent
        if sent and self.t3 is None:
            self.t3 = now + self.rto
        return sent

    # --- acknowledgements ------------------------------------------------------------------

    def on_sack(self, sack: SackChunk, now: float) -> bool:
        """Process a SACK (§6.2.1, §7.2); returns True when it acknowledged new data."""
        cum = unwrap32(sack.cumulative_tsn, self.cum_ack)
        if cum < self.cum_ack or cum >= self.next_tsn:
            return False  # §6.2.1 D i: older than our cumulative point, or acks unsent TSNs
        flight_before = self.flight
        cum_advanced = cum > self.cum_ack
        newly = 0
        highest_newly = -1
        rtt_chunk: SentChunk | None = None
        out = self.outstanding
        while out and out[0].tsn <= cum:
            c = out.popleft()
            if not c.acked:
                c.acked = True
                if not c.abandoned:
                    newly += c.size
                    self.outstanding_bytes -= c.size
                    highest_newly = c.tsn
                    if c.sent_count == 1:
                        rtt_chunk = c
            self._unflight(c)
        self.cum_ack = cum
        if self.adv_ack < cum:
            self.adv_ack = cum

        gaps = sack.gaps
        if out and (gaps or self._gap_acked):
            blocks = sorted((cum + s, cum + e) for s, e in gaps if 0 < s <= e)
            nb = len(blocks)
            bi = 0
            any_acked = False
            for c in out:
                t = c.tsn
                while bi < nb and blocks[bi][1] < t:
                    bi += 1
                if bi < nb and blocks[bi][0] <= t:
                    any_acked = True
                    if not c.acked:
                        c.acked = True
                        if not c.abandoned:
                            newly += c.size
                            self.outstanding_bytes -= c.size
                            if t > highest_newly:
                                highest_newly = t
                                if c.sent_count == 1:
                                    rtt_chunk = c
                        self._unflight(c)
                elif c.acked:
                    # §6.2.1 D iv: a gap-acked chunk missing now was reneged; it is outstanding.
                    c.acked = False
                    if not c.abandoned:
                        self.outstanding_bytes += c.size
                elif bi >= nb and not self._gap_acked:
                    break
            self._gap_acked = any_acked

        fast_marked = False
        if gaps and highest_newly >= 0:
            # §7.2.4 with HTNA: chunks below the highest newly acked TSN get a miss indication.
            for c in out:
                if c.tsn >= highest_newly:
                    break
                if c.acked or c.abandoned or c.retransmit or c.fast_retransmitted:
                    continue
                c.misses += 1
                if c.misses >= 3:
                    if self._should_abandon(c, now):
                        self._abandon(c.msg)
                        continue
                    c.fast_retransmitted = True
                    self._mark(c)
                    fast_marked = True
                    self.fast_retransmits += 1

        # §7.2.1 / §7.2.2: grow cwnd on cumulative progress, outside fast recovery.
        if self.fast_recovery_exit is not None and cum >= self.fast_recovery_exit:
            self.fast_recovery_exit = None
        if cum_advanced and self.fast_recovery_exit is None and newly:
            if self.cwnd <= self.ssthresh:
                if flight_before >= self.cwnd:
                    self.cwnd += min(newly, self.mtu)
            else:
                self.partial_bytes_acked += newly
                if self.partial_bytes_acked >= self.cwnd and flight_before >= self.cwnd:
                    self.partial_bytes_acked -= self.cwnd
                    self.cwnd += self.mtu
        if fast_marked and self.fast_recovery_exit is None:
            # §7.2.3 / §7.2.4: enter fast recovery.
            self.ssthresh = max(self.cwnd // 2, 4 * self.mtu)
            self.cwnd = self.ssthresh
            self.partial_bytes_acked = 0
            self.fast_recovery_exit = self.next_tsn - 1
            self._fast_burst = True
        if self.flight == 0:
            self.partial_bytes_acked = 0

        self.peer_rwnd = max(0, sack.a_rwnd - self.outstanding_bytes)  # §6.2.1 D ii
        if rtt_chunk is not None:
            self.update_rtt(now - rtt_chunk.sent_at)
        self._advance_peer_ack_point(now)
        # §6.3.2 R2 / R3
        if self.outstanding_bytes == 0 and self.adv_ack <= self.cum_ack:
            self.t3 = None
        elif cum_advanced or self.t3 is None:
            self.t3 = now + self.rto
        return newly > 0

    def _unflight(self, c: SentChunk) -> None:
        if c.in_flight:
            c.in_flight = False
            self.flight -= c.size
        if c.retransmit:
            c.retransmit = False
            self._rtx_pending -= 1

    def _mark(self, c: SentChunk) -> None:
        c.misses = 0
        if c.in_flight:
            c.in_flight = False
            self.flight -= c.size
        if not c.retransmit:
            c.retransmit = True
            self._rtx_pending += 1
            heapq.heappush(self._rtx, c)

    def update_rtt(self, r: float) -> None:
        """§6.3.1 C2/C3 (also fed by HEARTBEAT ACKs)."""
        if r < 0:
            return
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + 4 * self.rttvar, self.rto_min), self.rto_max)

    def on_t3_expired(self, now: float) -> None:
        """§6.3.3 E1-E3 and §7.2.3: everything outstanding is presumed lost."""
        self.t3_expirations += 1
        self.ssthresh = max(self.cwnd // 2, 4 * self.mtu)
        self.cwnd = self.mtu
        self.partial_bytes_acked = 0
        self.fast_recovery_exit = None
        self.rto = min(self.rto * 2, self.rto_max)
        for c in self.outstanding:
            if c.acked or c.abandoned:
                continue
            if self._should_abandon(c, now):
                self._abandon(c.msg)
            else:
                self._mark(c)
        self._advance_peer_ack_point(now)
        if self.adv_ack > self.cum_ack:
            self.forward_tsn_due = True  # RFC 3758 §3.5 C3: FORWARD TSN is retransmitted too
        needs = self.outstanding_bytes > 0 or self.adv_ack > self.cum_ack
        self.t3 = now + self.rto if needs else None

    # --- partial reliability (RFC 3758) ----------------------------------------------------

    @staticmethod
    def _should_abandon(c: SentChunk, now: float) -> bool:
        m = c.msg
        if m.abandoned:
            return True
        if m.max_retransmits is not None and c.sent_count > m.max_retransmits:
            return True
        return m.expiry is not None and now > m.expiry

    def _abandon(self, msg: OutMessage) -> None:
        """§3.5 A2/A3: all fragments of the message go, including those not yet sent."""
        if msg.abandoned:
            return
        msg.abandoned = True
        self.messages_abandoned += 1
        for c in msg.chunks:
            if not c.abandoned:
                c.abandoned = True
                if not c.acked:
                    self.outstanding_bytes -= c.size
                self._unflight(c)
        if self._current is msg:
            self.streams[msg.stream_id].buffered -= len(msg.data) - msg.offset
            self._current = None
            # Half sent: its fragments so far may all be acknowledged, so nothing would make
            # the peer skip it (and its SSN). Like dcsctp, give a never-sent placeholder end
            # fragment the next TSN, abandoned, for the FORWARD TSN to cover.
            tsn = self.next_tsn
            self.next_tsn = tsn + 1
            ph = SentChunk(tsn, msg, 0, b"", 0.0)
            ph.abandoned = True
            ph.in_flight = False
            msg.chunks.append(ph)
            self._placeholders.append(ph)  # joins `outstanding` after any loop over it

    def _flush_placeholders(self) -> None:
        if self._placeholders:
            self.outstanding.extend(self._placeholders)
            self._placeholders.clear()

    def _advance_peer_ack_point(self, now: float) -> None:
        self._flush_placeholders()
        if not self.partial_reliability:
            return
        out = self.outstanding
        idx = self.adv_ack - self.cum_ack
        n = len(out)
        while idx < n and out[idx].abandoned:
            idx += 1
        self.adv_ack = self.cum_ack + idx
        if self.adv_ack > self.cum_ack and (
            self.adv_ack != self._fwd_sent_adv
            or now - self._fwd_sent_at >= (self.srtt if self.srtt is not None else self.rto)
        ):
            self.forward_tsn_due = True

    def build_forward_tsn(self, now: float) -> ForwardTsnChunk | None:
        """§3.5 C4: new cumulative TSN plus the last skipped SSN of each ordered stream."""
        self.forward_tsn_due = False
        if self.adv_ack <= self.cum_ack:
            return None
        last_ssn: dict[int, int] = {}
        max_entries = (self.mtu - COMMON_HEADER_SIZE - 8) // 4
        new_cum = self.cum_ack
        for i in range(self.adv_ack - self.cum_ack):
            m = self.outstanding[i].msg
            if not m.unordered:
                if m.stream_id not in last_ssn and len(last_ssn) == max_entries:
                    break  # keep the chunk inside one packet; the rest goes in the next one
                last_ssn[m.stream_id] = m.ssn
            new_cum += 1
        self._fwd_sent_adv = new_cum
        self._fwd_sent_at = now
        if self.t3 is None:
            self.t3 = now + self.rto
        return ForwardTsnChunk(new_cum & U32, sorted(last_ssn.items()))
