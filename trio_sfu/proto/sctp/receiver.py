"""Inbound half of an association: TSN tracking, SACK generation, reassembly, ordered delivery,
FORWARD TSN and deferred stream resets (RFC 9260 §6.2, §6.5-6.9, RFC 3758 §3.6, RFC 6525 §5.2.2).

Reassembly works on "segments": runs of consecutive TSNs that belong to one message, merged as
fragments arrive. With plain DATA chunks a message occupies consecutive TSNs (§6.9), so a
segment that starts with a B fragment and ends with an E fragment is a whole message; a segment's
byte count is known at every step, so an oversized inbound message is caught as it grows instead
of after it has eaten memory.
"""

from __future__ import annotations

from .chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk, SackChunk
from .sender import U32, unwrap32

_MAX_DUPLICATES = 32
_BE = FLAG_BEGIN | FLAG_END


class ProtocolViolation(Exception):
    """Raised by the receiver when the peer breaks a rule that warrants an ABORT."""

    def __init__(self, cause: int, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class _Segment:
    __slots__ = ("begin", "end", "finish", "nbytes", "ssn", "start", "stream_id", "unordered")

    def __init__(self, tsn: int, c: DataChunk) -> None:
        self.start = tsn
        self.end = tsn
        self.nbytes = len(c.payload)
        self.begin = bool(c.flags & FLAG_BEGIN)
        self.finish = bool(c.flags & FLAG_END)
        self.stream_id = c.stream_id
        self.ssn = c.ssn
        self.unordered = bool(c.flags & FLAG_UNORDERED)

    def same_message(self, c: DataChunk) -> bool:
        return (
            self.stream_id == c.stream_id
            and self.unordered == bool(c.flags & FLAG_UNORDERED)
            and (self.unordered or self.ssn == c.ssn)
        )


class _InStream:
    __slots__ = ("next_ssn", "pending")

    def __init__(self) -> None:
        self.next_ssn = 0
        self.pending: dict[int, tuple[int, bytes]] = {}  # ssn -> (ppid, data), complete


# A complete message waiting for a deferred reset: (first tsn, stream, ssn, unordered, ppid, data)
_Held = tuple[int, int, int, bool, int, bytes]


class Receiver:
    def __init__(
        self,
        *,
        initial_tsn: int,
        max_message_size: int,
        window: int,
        inbound_streams: int,
        delayed_ack: float = 0.2,
    ) -> None:
        self.cum = initial_tsn - 1  # unwrapped cumulative TSN
        self.highest = self.cum
        self.above: set[int] = set()  # received TSNs above cum
        self.duplicates: list[int] = []
        self.max_message_size = max_message_size
        self.window = window
        self.inbound_streams = inbound_streams
        self.buffered = 0
        self.delayed_ack = delayed_ack
        self.sack_deadline: float | None = None
        self._sack_now = False
        self._unacked_packets = 0
        self._frags: dict[int, DataChunk] = {}
        self._seg_start: dict[int, _Segment] = {}
        self._seg_end: dict[int, _Segment] = {}
        self._streams: dict[int, _InStream] = {}
        self._deferred: list[tuple[int, frozenset[int]]] = []  # (last tsn, streams) RFC 6525
        self._held: list[_Held] = []
        self._applied: list[tuple[int, frozenset[int]]] = []
        # Outputs drained by the association.
        self.messages: list[tuple[int, int, bytes]] = []  # (stream, ppid, data)
        self.resets_done: list[list[int]] = []
        self.invalid_streams: list[int] = []
        # counters
        self.data_chunks_received = 0
        self.duplicate_chunks = 0
        self.dropped_chunks = 0

    @property
    def a_rwnd(self) -> int:
        return max(0, self.window - self.buffered)

    def unwrap(self, tsn: int) -> int:
        return unwrap32(tsn, self.cum)

    # --- DATA ------------------------------------------------------------------------------

    def on_data(self, c: DataChunk) -> bool:
        """Returns True if the chunk was new (False: duplicate or dropped)."""
        cum = self.cum
        tsn = cum + ((c.tsn - cum + 0x80000000) & U32) - 0x80000000
        if tsn <= cum or tsn in self.above:
            self.duplicate_chunks += 1
            if len(self.duplicates) < _MAX_DUPLICATES:
                self.duplicates.append(c.tsn)
            return False
        n = len(c.payload)
        if tsn - cum > 0x100000 or (self.buffered + n > self.window and tsn != cum + 1):
            # §6.2: no room (or absurdly far ahead): drop; the peer will retransmit.
            self.dropped_chunks += 1
            return False
        if not n:
            raise ProtocolViolation(9, "DATA chunk without user data")  # §6.2 No User Data
        self.data_chunks_received += 1
        if tsn > self.highest:
            self.highest = tsn
        seg = None
        if c.stream_id >= self.inbound_streams:
            # §6.5: acknowledge, report Invalid Stream Identifier, discard.
            self.invalid_streams.append(c.stream_id)
        else:
            self.buffered += n
            if c.flags & _BE == _BE:
                self._complete(tsn, c.stream_id, c.ssn, bool(c.flags & FLAG_UNORDERED), c.ppid,
                               c.payload)
            else:
                seg = self._insert_fragment(tsn, c)
        if tsn == cum + 1:
            self._advance(tsn)
        else:
            self.above.add(tsn)
        if self._seg_end:
            self._reap(tsn, seg)
        return True

    def _reap(self, tsn: int, seg: _Segment | None) -> None:
        """Drop unfinished messages whose next TSN turned out to hold something else.

        With plain DATA a message's fragments have consecutive TSNs, so an unfinished run
        followed by a received TSN that did not join it can never complete (a sender that
        abandons a message half sent, or a broken one). Keeping it would pin its bytes forever.
        """
        left = self._seg_end.get(tsn - 1)
        if left is not None and left is not seg and not left.finish:
            self._drop_segment(left)
        if seg is not None and not seg.finish:
            nxt = seg.end + 1
            if nxt <= self.cum or nxt in self.above:
                self._drop_segment(seg)

    def _advance(self, tsn: int) -> None:
        """Move the cumulative TSN to ``tsn`` and on over contiguous received TSNs."""
        above = self.above
        seg_start = self._seg_start
        while True:
            self.cum = tsn
            seg = seg_start.get(tsn)
            if seg is not None and not seg.begin:
                # Its predecessor is known and is not part of it: this run can never complete.
                self._drop_segment(seg)
            nxt = tsn + 1
            if nxt not in above:
                break
            above.discard(nxt)
            tsn = nxt
        if self._deferred:
            self._check_deferred()

    def _insert_fragment(self, tsn: int, c: DataChunk) -> _Segment | None:
        """File a fragment; returns its (still incomplete) segment, None once delivered."""
        frags = self._frags
        frags[tsn] = c
        seg_end = self._seg_end
        seg_start = self._seg_start
        left = right = None
        if not c.flags & FLAG_BEGIN:
            cand = seg_end.get(tsn - 1)
            if cand is not None and not cand.finish:
                if not cand.same_message(c):
                    raise ProtocolViolation(13, "fragments of one message disagree")
                left = cand
        if not c.flags & FLAG_END:
            cand = seg_start.get(tsn + 1)
            if cand is not None and not cand.begin:
                if not cand.same_message(c):
                    raise ProtocolViolation(13, "fragments of one message disagree")
                right = cand
        if left is not None:
            del seg_end[tsn - 1]
            seg = left
            seg.end = tsn
            seg.nbytes += len(c.payload)
            seg.finish = bool(c.flags & FLAG_END)
        else:
            seg = _Segment(tsn, c)
            seg_start[tsn] = seg
        if right is not None:
            del seg_start[tsn + 1]
            seg.end = right.end
            seg.nbytes += right.nbytes
            seg.finish = right.finish
        seg_end[seg.end] = seg
        if seg.nbytes > self.max_message_size:
            raise ProtocolViolation(13, "inbound message exceeds max-message-size")
        if seg.begin and seg.finish:
            del seg_start[seg.start]
            del seg_end[seg.end]
            first = frags.pop(seg.start)
            parts = [first.payload]
            for t in range(seg.start + 1, seg.end + 1):
                parts.append(frags.pop(t).payload)
            self._complete(seg.start, seg.stream_id, seg.ssn, seg.unordered, first.ppid,
                           b"".join(parts))
            return None
        return seg

    def _drop_segment(self, seg: _Segment) -> None:
        self._seg_start.pop(seg.start, None)
        self._seg_end.pop(seg.end, None)
        for t in range(seg.start, seg.end + 1):
            c = self._frags.pop(t, None)
            if c is not None:
                self.buffered -= len(c.payload)

    def _complete(
        self, tsn: int, sid: int, ssn: int, unordered: bool, ppid: int, data: bytes
    ) -> None:
        if self._deferred:
            for last, streams in self._deferred:
                if tsn > last and (not streams or sid in streams):
                    # RFC 6525 §5.2.2 E2: data after the reset point waits for the reset.
                    self._held.append((tsn, sid, ssn, unordered, ppid, data))
                    return
        if unordered:
            self._deliver(sid, ppid, data)
            return
        st = self._streams.get(sid)
        if st is None:
            st = self._streams[sid] = _InStream()
        d = (ssn - st.next_ssn) & 0xFFFF
        if d == 0:
            self._deliver(sid, ppid, data)
            nxt = (ssn + 1) & 0xFFFF
            pending = st.pending
            while nxt in pending:
                p, dd = pending.pop(nxt)
                self._deliver(sid, p, dd)
                nxt = (nxt + 1) & 0xFFFF
            st.next_ssn = nxt
        elif d < 0x8000 and ssn not in st.pending:
            st.pending[ssn] = (ppid, data)
        else:
            self.buffered -= len(data)  # an SSN we already passed: stale
            self.dropped_chunks += 1

    def _deliver(self, sid: int, ppid: int, data: bytes) -> None:
        self.buffered -= len(data)
        self.messages.append((sid, ppid, data))

    # --- FORWARD TSN (RFC 3758 §3.6) -------------------------------------------------------

    def on_forward_tsn(self, new_cum: int, streams: list[tuple[int, int]]) -> None:
        n = self.unwrap(new_cum)
        if n <= self.cum:
            return
        if n - self.cum > 0x100000:
            raise ProtocolViolation(13, "FORWARD TSN too far ahead")
        for seg in [s for s in self._seg_start.values() if s.start <= n]:
            self._drop_segment(seg)  # abandoned messages: drop whatever fragments arrived
        self.above = {t for t in self.above if t > n}
        if n > self.highest:
            self.highest = n
        for sid, ssn in streams:
            st = self._streams.get(sid)
            if st is None:
                st = self._streams[sid] = _InStream()
            d = (ssn - st.next_ssn) & 0xFFFF
            if d >= 0x8000:
                continue  # already past that SSN
            # Deliver what completed up to the skipped SSN (in SSN order), then drain on.
            base = st.next_ssn
            for s in sorted(
                (k for k in st.pending if (k - base) & 0xFFFF <= d),
                key=lambda k: (k - base) & 0xFFFF,
            ):
                p = st.pending.pop(s)
                self._deliver(sid, p[0], p[1])
            s = (ssn + 1) & 0xFFFF
            while s in st.pending:
                p = st.pending.pop(s)
                self._deliver(sid, p[0], p[1])
                s = (s + 1) & 0xFFFF
            st.next_ssn = s
        self.above.discard(n)
        self._advance(n)

    # --- stream reset (RFC 6525 §5.2.2) ----------------------------------------------------

    def reset_incoming(self, last_tsn: int, streams: list[int]) -> bool:
        """Reset now if every TSN up to ``last_tsn`` arrived, else defer; True when performed."""
        last = self.unwrap(last_tsn)
        key = (last, frozenset(streams))
        if key in self._applied:
            return True  # a retransmitted request for a reset we already performed
        if last <= self.cum:
            self._apply_reset(key)
            return True
        if key not in self._deferred:
            self._deferred.append(key)
        return False

    def _check_deferred(self) -> None:
        ready = [k for k in self._deferred if k[0] <= self.cum]
        for key in ready:
            self._deferred.remove(key)
            self._apply_reset(key)

    def _apply_reset(self, key: tuple[int, frozenset[int]]) -> None:
        streams = key[1]
        targets = list(streams) if streams else list(self._streams)
        for sid in targets:
            st = self._streams.pop(sid, None)
            if st is not None:
                for _, data in st.pending.values():
                    self.buffered -= len(data)
        self._applied.append(key)
        del self._applied[:-16]
        self.resets_done.append(sorted(targets))
        held, self._held = self._held, []
        for item in sorted(held, key=lambda h: h[0]):
            self._complete(*item)

    # --- SACK ------------------------------------------------------------------------------

    def note_packet(self, now: float, urgent: bool) -> None:
        """A packet with DATA (or FORWARD TSN) was processed: decide when to SACK (§6.2)."""
        if urgent or self.above or self.duplicates:
            self._sack_now = True  # gaps, duplicates, a filled gap: report at once (§6.7)
            return
        self._unacked_packets += 1
        if self._unacked_packets >= 2:
            self._sack_now = True  # at least every second packet
        elif self.sack_deadline is None:
            self.sack_deadline = now + self.delayed_ack  # or within 200 ms

    def sack_due(self, now: float, piggyback: bool) -> bool:
        deadline = self.sack_deadline
        return self._sack_now or (deadline is not None and (piggyback or now >= deadline))

    def build_sack(self, max_size: int) -> SackChunk:
        """§3.3.4: gap blocks relative to the cumulative TSN, trimmed to fit ``max_size``."""
        self._sack_now = False
        self.sack_deadline = None
        self._unacked_packets = 0
        cum = self.cum
        dups = self.duplicates
        self.duplicates = []
        max_blocks = max(0, (max_size - 16 - 4 * len(dups)) // 4)
        gaps: list[tuple[int, int]] = []
        if self.above:
            start = prev = -1
            for t in sorted(self.above):
                off = t - cum
                if off > 0xFFFF:
                    break
                if off == prev + 1:
                    prev = off
                    continue
                if start >= 0:
                    gaps.append((start, prev))
                    if len(gaps) >= max_blocks:
                        start = -1
                        break
                start = prev = off
            if start >= 0 and len(gaps) < max_blocks:
                gaps.append((start, prev))
        return SackChunk(cum & U32, self.a_rwnd, gaps, dups)
