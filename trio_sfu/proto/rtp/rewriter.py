"""The SFU's forwarding rewriter: one publisher stream towards one subscriber.

Everything that does not depend on the packet is computed once per (subscriber, track), so the
per-packet work is a handful of ``unpack_from``/``pack_into`` calls, one integer mask for the
header extensions and the payload copy (DESIGN.md, "The hot path").
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Mapping
from typing import Final

from trio_sfu.proto.rtp.packet import ONE_BYTE_PROFILE, TWO_BYTE_PROFILE, seq_delta

__all__ = ["RtpRewriter", "TransportCcSequencer"]

_FIXED: Final = struct.Struct("!BBHII")
_SEQ_TS_SSRC: Final = struct.Struct("!HII")
_U16: Final = struct.Struct("!H")
_EXT_HEADER: Final = struct.Struct("!HH")


class TransportCcSequencer:
    """The transport-wide sequence space of one subscriber transport.

    transport-cc numbers every packet on a transport, whatever its stream, so all rewriters
    towards one subscriber share one of these (draft-holmer-rmcat-transport-wide-cc-extensions-01
    §2). ``ext_id`` is the id the subscriber negotiated for the extension.
    """

    __slots__ = ("ext_id", "next_seq")

    def __init__(self, ext_id: int, start: int = 0) -> None:
        if not 1 <= ext_id <= 255:
            raise ValueError("extension id must be 1..255")
        self.ext_id = ext_id
        self.next_seq = start & 0xFFFF


_NEVER: Final = -(1 << 62)
_WINDOW: Final = 1024  # input sequence numbers remembered for duplicate detection
_PATCH, _DROP_BLOCK, _REBUILD = 0, 1, 2
# (header mask, header signature, keep mask, new header bytes, transport-cc shift, mode)
_Plan = tuple[int, int, int, int, int, int]
_MAX_PLANS: Final = 16
_SLACK: Final = 16  # room for an added extension header, the transport-cc element and padding


#: the slots of :class:`RtpRewriter`, which its ``clone`` copies (a class compiled by mypyc
#: has no ``__slots__`` to read at run time: docs/architecture.md, "Compiled")
_REWRITER_FIELDS: Final = (
    "_buf",
    "_clock_rate",
    "_ext_map",
    "_in_highest",
    "_out_first",
    "_out_highest",
    "_out_ts_last",
    "_pending_ssrc",
    "_pending_ts_delta",
    "_plans",
    "_pt_map",
    "_seen",
    "_seq_off",
    "_source_first",
    "_source_ssrc",
    "_ssrc",
    "_started",
    "_ts_off",
    "_twcc",
    "_two_byte_out",
    "_view",
    "dropped",
    "octets",
    "packets",
    "retransmitted",
    "twcc_offset",
)


class RtpRewriter:
    """Rewrite one publisher stream for one subscriber: SSRC, PT, seq/ts offsets, extensions.

    Everything that does not depend on the packet is computed once here so :meth:`rewrite` is a
    handful of ``unpack_from``/``pack_into`` calls into a preallocated header buffer, one
    integer mask per extension block (see :meth:`_plan`) and the payload copy.
    Extension values pass through untouched: only ids are remapped, and elements not in the
    map (mid, rid, repaired-rid, the publisher's transport-cc) are dropped, because the
    subscriber's SDP signals its streams by SSRC.

    Sequence numbers are unwrapped (RFC 3550 A.1) so a reordered packet keeps its place; inputs
    are de-duplicated over the last 1024 sequence numbers so output numbers stay unique. Packets
    from an SSRC other than the current source, from before the first packet of the current
    source, or older than the duplicate window are dropped and counted in ``dropped``.
    A NACKed packet is re-sent with :meth:`to_input_sequence` (which input packet it was)
    and :meth:`rewrite_as` (the same output again, state untouched).
    """

    __slots__ = _REWRITER_FIELDS

    def __init__(
        self,
        ssrc: int,
        payload_types: Mapping[int, int],
        extension_ids: Mapping[int, int] | None = None,
        *,
        clock_rate: int = 90000,
        twcc: TransportCcSequencer | None = None,
        initial_sequence: int | None = None,
        initial_timestamp: int | None = None,
        buffer_size: int = 2048,
    ) -> None:
        self._ssrc = ssrc & 0xFFFFFFFF
        self._twcc = twcc
        self.remap(payload_types, extension_ids)
        self._clock_rate = clock_rate
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._seen = [_NEVER] * _WINDOW
        self._started = False
        self._source_ssrc = -1
        self._source_first = 0
        self._in_highest = 0
        self._seq_off = 0
        self._ts_off = 0
        # Extended output sequence: first of the current source and highest emitted overall.
        # A random start (RFC 3550 §5.1); 15 bits keeps the SRTP rollover counter from
        # wrapping early, which receivers guess badly (RFC 3711 §3.3.1).
        start_seq = secrets.randbits(15) if initial_sequence is None else initial_sequence
        start_ts = secrets.randbits(32) if initial_timestamp is None else initial_timestamp
        self._out_highest = (start_seq & 0xFFFF) - 1
        self._out_first = self._out_highest + 1
        self._out_ts_last = start_ts & 0xFFFFFFFF  # the first packet gets exactly start_ts
        self._pending_ts_delta = 0
        self._pending_ssrc = -1
        self.packets = 0
        self.octets = 0
        self.dropped = 0
        self.retransmitted = 0
        #: where the last output's transport-cc sequence number sits (-1: none), so a
        #: forwarding group can rewrite once and number per subscriber transport
        self.twcc_offset = -1

    def clone(self) -> RtpRewriter:
        """An independent copy that continues exactly where this one is (same sequence,
        timestamp and duplicate-window state): a subscriber leaving a forwarding group for
        numbering of its own starts from the group's state, so it sees no glitch."""
        twin = RtpRewriter(self._ssrc, {})
        for name in _REWRITER_FIELDS:
            setattr(twin, name, getattr(self, name))
        twin._seen = list(self._seen)
        twin._buf = bytearray(self._buf)
        twin._view = memoryview(twin._buf)
        if self._twcc is not None:
            twin._twcc = TransportCcSequencer(self._twcc.ext_id, self._twcc.next_seq)
        twin._plans = dict(self._plans)
        return twin

    def remap(
        self, payload_types: Mapping[int, int], extension_ids: Mapping[int, int] | None = None
    ) -> None:
        """Set the input → output payload type and extension id maps.

        Called at construction and when the source changes to a stream negotiated with other
        numbers (a WHEP viewer following a replaced publisher): the output side keeps its own
        numbering, so the subscriber never renegotiates.
        """
        # Input PT → output PT; -1 drops (e.g. a codec the subscriber did not negotiate).
        pt_map = [-1] * 128
        for pt_in, pt_out in payload_types.items():
            if not (0 <= pt_in <= 127 and 0 <= pt_out <= 127):
                raise ValueError("payload types must be 0..127")
            pt_map[pt_in] = pt_out
        twcc_id = self._twcc.ext_id if self._twcc is not None else 0
        # Input extension id → output id; 0 drops (mid/rid of the publisher leg, unknown ids).
        ext_map = [0] * 256
        out_ids = [twcc_id] if twcc_id else []
        for id_in, id_out in (extension_ids or {}).items():
            if not (1 <= id_in <= 255 and 1 <= id_out <= 255):
                raise ValueError("extension ids must be 1..255")
            if id_out == twcc_id:
                continue  # the subscriber leg's own transport-cc sequence wins
            ext_map[id_in] = id_out
            out_ids.append(id_out)
        self._pt_map = pt_map
        self._ext_map = ext_map
        self._two_byte_out = any(i > 14 for i in out_ids)
        self._plans: dict[int, _Plan] = {}  # cached per extension layout: they depend on the map

    @property
    def ssrc(self) -> int:
        """The SSRC the subscriber sees."""
        return self._ssrc

    @property
    def source_ssrc(self) -> int:
        """The SSRC of the input stream being forwarded (-1: none yet, or switching)."""
        return self._source_ssrc

    @property
    def last_sequence(self) -> int:
        """Highest output sequence number emitted so far (16-bit)."""
        return self._out_highest & 0xFFFF

    @property
    def last_timestamp(self) -> int:
        """Output RTP timestamp of the highest-sequence packet emitted (for Sender Reports)."""
        return self._out_ts_last & 0xFFFFFFFF

    def switch_source(self, elapsed: float, ssrc: int | None = None) -> None:
        """Continue the output seamlessly from a new input stream (rejoin or simulcast switch).

        The next packet (from ``ssrc`` if given, else from any SSRC) starts the new source; it
        gets output sequence ``last + 1`` and a timestamp ``elapsed`` seconds (converted with
        the clock rate, at least one tick) after the last one emitted, so the subscriber's
        jitter buffer sees a gap, never a jump back. ``elapsed`` is wall-clock time since the
        last forwarded packet, supplied by the caller because this core reads no clock.
        """
        self._pending_ssrc = -1 if ssrc is None else ssrc & 0xFFFFFFFF
        if not self._started:
            return
        self._source_ssrc = -1
        self._pending_ts_delta = max(1, round(elapsed * self._clock_rate))

    def to_input_sequence(self, out_seq: int) -> int | None:
        """Map a subscriber's NACKed sequence back to the current source's, or None.

        None when the number belongs to an earlier source (its packets cannot be re-requested
        from the current publisher stream).
        """
        if not self._started or self._source_ssrc < 0:
            return None
        ext = self._out_highest + seq_delta(out_seq, self._out_highest)
        if ext < self._out_first or ext > self._out_highest:
            return None
        return (ext - self._seq_off) & 0xFFFF

    def _begin_source(self, ssrc: int, seq: int, ts: int) -> None:
        self._source_ssrc = ssrc
        self._source_first = seq
        self._in_highest = seq
        self._seen = [_NEVER] * _WINDOW
        first_out = self._out_highest + 1
        self._out_first = first_out
        self._seq_off = first_out - seq
        if self._started:
            self._ts_off = (self._out_ts_last + self._pending_ts_delta - ts) & 0xFFFFFFFF
        else:
            self._ts_off = (self._out_ts_last - ts) & 0xFFFFFFFF
            self._started = True

    def rewrite(self, packet: bytes) -> bytes | None:
        """The rewritten packet, or None to drop it (unmapped PT, other SSRC, duplicate, bad)."""
        n = len(packet)
        if n < 12:
            self.dropped += 1
            return None
        b0 = packet[0]
        b1 = packet[1]
        pt = self._pt_map[b1 & 0x7F]
        if pt < 0 or b0 & 0xC0 != 0x80:
            self.dropped += 1
            return None
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        if ssrc != self._source_ssrc:
            if self._source_ssrc >= 0 or (self._pending_ssrc >= 0 and ssrc != self._pending_ssrc):
                self.dropped += 1
                return None
            self._begin_source(ssrc, seq, ts)

        # RFC 3550 A.1: place the packet relative to the highest input seen.
        highest = self._in_highest
        # in order, the common case, without a call
        ext = highest + (1 if seq == (highest + 1) & 0xFFFF else seq_delta(seq, highest))
        if ext < self._source_first or ext <= highest - _WINDOW:
            self.dropped += 1
            return None
        slot = ext & (_WINDOW - 1)
        if self._seen[slot] == ext:
            self.dropped += 1
            return None

        pos = 12 + 4 * (b0 & 0x0F)
        buf = self._buf
        if b0 & 0x10:
            if pos + 4 > n:
                self.dropped += 1
                return None
            hdr_end = pos + 4 + 4 * _U16.unpack_from(packet, pos + 2)[0]
            if hdr_end > n:
                self.dropped += 1
                return None
            if 2 * hdr_end + _SLACK > len(buf):
                # A rebuild into the two-byte form grows each element by at most one byte.
                buf = self._grow(2 * hdr_end)
            block = int.from_bytes(packet[pos:hdr_end])
            plan = self._plans.get(hdr_end - pos)
            if plan is None or block & plan[0] != plan[1]:
                plan = self._plan(packet, pos, hdr_end)
                if plan is None:
                    self.dropped += 1
                    return None
            mode = plan[5]
            if mode == _PATCH:
                block = (block & plan[2]) | plan[3]
                if plan[4] >= 0:
                    twcc = self._twcc
                    assert twcc is not None
                    tseq = twcc.next_seq
                    twcc.next_seq = (tseq + 1) & 0xFFFF
                    block |= tseq << plan[4]
                    self.twcc_offset = hdr_end - 2 - (plan[4] >> 3)
                else:
                    self.twcc_offset = -1
                buf[pos:hdr_end] = block.to_bytes(hdr_end - pos)
                out = hdr_end
            elif mode == _DROP_BLOCK:
                out = pos
                self.twcc_offset = -1
            else:
                out = self._write_extensions(packet, pos, hdr_end)
                if out < 0:
                    self.dropped += 1
                    return None
        else:
            hdr_end = pos
            if pos > n:
                self.dropped += 1
                return None
            if self._twcc is None:
                out = pos
                self.twcc_offset = -1
            else:
                out = self._write_extensions(packet, pos, pos)
        if pos > 12:
            buf[12:pos] = packet[12:pos]

        if ext > highest:
            self._in_highest = ext
        self._seen[slot] = ext
        out_ext = ext + self._seq_off
        out_ts = (ts + self._ts_off) & 0xFFFFFFFF
        if out_ext > self._out_highest:
            self._out_highest = out_ext
            self._out_ts_last = out_ts
        _FIXED.pack_into(
            buf,
            0,
            (b0 & 0xEF) | (0x10 if out > pos else 0),
            (b1 & 0x80) | pt,
            out_ext & 0xFFFF,
            out_ts,
            self._ssrc,
        )
        self.packets += 1
        self.octets += n - hdr_end
        # Header from the buffer plus the untouched payload: measured cheaper than copying the
        # payload into the buffer and the whole packet out again.
        return self._view[:out].tobytes() + packet[hdr_end:]

    def rewrite_as(self, packet: bytes, out_seq: int) -> bytes | None:
        """Rewrite a cached packet again, for a retransmission numbered ``out_seq``.

        ``out_seq`` is what the subscriber NACKed and :meth:`to_input_sequence` mapped to this
        packet; the result carries the same SSRC, payload type, timestamp and extensions as
        :meth:`rewrite` gave the original, so a retransmission is byte-identical to it except
        for a fresh transport-cc number (every packet on a transport gets its own,
        draft-holmer-rmcat-transport-wide-cc-extensions-01 §2). Sequence state, the duplicate
        window and the forwarding counters stay untouched; ``retransmitted`` counts these.
        None when the packet is not the current source's packet that ``out_seq`` maps to
        (another SSRC, a previous source, a stale cache entry) or is malformed.
        """
        n = len(packet)
        if n < 12 or not self._started:
            return None
        b0 = packet[0]
        b1 = packet[1]
        pt = self._pt_map[b1 & 0x7F]
        if pt < 0 or b0 & 0xC0 != 0x80:
            return None
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        if ssrc != self._source_ssrc or (seq + self._seq_off - out_seq) & 0xFFFF:
            return None
        out, hdr_end = self._headers(packet, b0, n)
        if out < 0:
            return None
        _FIXED.pack_into(
            self._buf,
            0,
            (b0 & 0xEF) | (0x10 if out > 12 + 4 * (b0 & 0x0F) else 0),
            (b1 & 0x80) | pt,
            out_seq & 0xFFFF,
            (ts + self._ts_off) & 0xFFFFFFFF,
            self._ssrc,
        )
        self.retransmitted += 1
        return self._view[:out].tobytes() + packet[hdr_end:]

    def _headers(self, packet: bytes, b0: int, n: int) -> tuple[int, int]:
        """Write CSRCs and the remapped extension block into the buffer after the fixed header.

        Returns ``(end of the output header, end of the input header)``; the first is -1 when
        the input header is malformed. Consumes a transport-cc number when one is written.
        :meth:`rewrite` inlines this same code because the call costs it ~0.1 µs a packet
        (5%); the two must stay in step (the media fuzz suite checks they agree byte for byte).
        """
        pos = 12 + 4 * (b0 & 0x0F)
        buf = self._buf
        if b0 & 0x10:
            if pos + 4 > n:
                return -1, 0
            hdr_end = pos + 4 + 4 * _U16.unpack_from(packet, pos + 2)[0]
            if hdr_end > n:
                return -1, 0
            if 2 * hdr_end + _SLACK > len(buf):
                # A rebuild into the two-byte form grows each element by at most one byte.
                buf = self._grow(2 * hdr_end)
            block = int.from_bytes(packet[pos:hdr_end])
            plan = self._plans.get(hdr_end - pos)
            if plan is None or block & plan[0] != plan[1]:
                plan = self._plan(packet, pos, hdr_end)
                if plan is None:
                    return -1, 0
            mode = plan[5]
            if mode == _PATCH:
                block = (block & plan[2]) | plan[3]
                if plan[4] >= 0:
                    twcc = self._twcc
                    assert twcc is not None
                    tseq = twcc.next_seq
                    twcc.next_seq = (tseq + 1) & 0xFFFF
                    block |= tseq << plan[4]
                    self.twcc_offset = hdr_end - 2 - (plan[4] >> 3)
                else:
                    self.twcc_offset = -1
                buf[pos:hdr_end] = block.to_bytes(hdr_end - pos)
                out = hdr_end
            elif mode == _DROP_BLOCK:
                out = pos
                self.twcc_offset = -1
            else:
                out = self._write_extensions(packet, pos, hdr_end)
                if out < 0:
                    return -1, 0
        else:
            hdr_end = pos
            if pos > n:
                return -1, 0
            if self._twcc is None:
                out = pos
                self.twcc_offset = -1
            else:
                out = self._write_extensions(packet, pos, pos)
        if pos > 12:
            buf[12:pos] = packet[12:pos]
        return out, hdr_end

    def _grow(self, n: int) -> bytearray:
        self._buf = bytearray(n + 2 * _SLACK)
        self._view = memoryview(self._buf)
        return self._buf

    def _plan(self, packet: bytes, pos: int, end: int) -> _Plan | None:
        """Work out, once per extension layout, how to remap it with integer masks.

        Publishers repeat a handful of layouts (which extensions, in which order), so the
        per-packet work becomes: check the layout's header bytes with one mask and compare,
        then ``(block & keep) | headers | transport_seq << shift`` — no per-element loop.
        Kept elements get their new id, dropped ones become RFC 8285 padding (zero bytes),
        and the subscriber's transport-cc number reuses the slot of a dropped 2-byte element
        (normally the publisher's own transport-cc), so the block keeps its size. Layouts
        that cannot be remapped in place are flagged for a rebuild. None if malformed.
        """
        size = end - pos
        mask = bytearray(size)
        sig = bytearray(size)
        keep = bytearray(size)
        put = bytearray(size)
        mask[0:4] = b"\xff\xff\xff\xff"
        sig[0:4] = packet[pos : pos + 4]
        keep[0:4] = b"\xff\xff\xff\xff"
        profile = _U16.unpack_from(packet, pos)[0]
        twcc = self._twcc
        twcc_shift = -1
        mode = _PATCH
        kept = False
        ext_map = self._ext_map
        i = 4
        if profile == ONE_BYTE_PROFILE:
            if self._two_byte_out:
                mode = _REBUILD
            while i < size:
                byte = packet[pos + i]
                mask[i] = 0xFF
                sig[i] = byte
                eid = byte >> 4
                if eid == 0:  # RFC 8285 §4.2: padding
                    i += 1
                    continue
                if eid == 15:  # RFC 8285 §4.2: stop; the rebuild drops the rest
                    mode = _REBUILD
                    break
                length = (byte & 0x0F) + 1
                if i + 1 + length > size:
                    return None
                oid = ext_map[eid]
                if mode != _PATCH:
                    pass  # only the signature matters: the rebuild re-walks the block
                elif oid:
                    put[i] = (oid << 4) | (length - 1)
                    keep[i + 1 : i + 1 + length] = b"\xff" * length
                    kept = True
                elif twcc is not None and twcc_shift < 0 and length == 2:
                    put[i] = (twcc.ext_id << 4) | 1
                    twcc_shift = 8 * (size - i - 3)
                i += 1 + length
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            if not self._two_byte_out:
                mode = _REBUILD
            while i < size:
                eid = packet[pos + i]
                mask[i] = 0xFF
                sig[i] = eid
                if eid == 0:  # RFC 8285 §4.3: padding
                    i += 1
                    continue
                if i + 2 > size:
                    return None
                length = packet[pos + i + 1]
                mask[i + 1] = 0xFF
                sig[i + 1] = length
                if i + 2 + length > size:
                    return None
                oid = ext_map[eid]
                if oid:
                    put[i] = oid
                    put[i + 1] = length
                    keep[i + 2 : i + 2 + length] = b"\xff" * length
                    kept = True
                elif twcc is not None and twcc_shift < 0 and length == 2:
                    put[i] = twcc.ext_id
                    put[i + 1] = 2
                    twcc_shift = 8 * (size - i - 4)
                i += 2 + length
        else:
            mode = _REBUILD  # RFC 3550 §5.3.1 profile-specific data: nothing to keep
        if mode == _PATCH:
            if twcc is not None and twcc_shift < 0:
                mode = _REBUILD
            elif not kept and twcc is None:
                mode = _DROP_BLOCK
        plan: _Plan = (
            int.from_bytes(mask),
            int.from_bytes(sig),
            int.from_bytes(keep),
            int.from_bytes(put),
            twcc_shift,
            mode,
        )
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()  # a publisher cycling through layouts must not grow memory
        self._plans[size] = plan
        return plan

    def _write_extensions(self, packet: bytes, pos: int, end: int) -> int:
        """Rebuild the extension block at ``pos`` from ``packet``'s block ``[pos, end)``.

        The slow path: used when the output form differs from the input's or transport-cc
        needs a new element. Returns the new header end (``pos`` when nothing survives, so
        the X bit follows from it) or -1 if the input block is malformed.
        """
        profile = _U16.unpack_from(packet, pos)[0] if end > pos else 0
        two_byte = self._two_byte_out
        while True:
            res = self._write_elements(packet, profile, pos + 4, end, pos, two_byte)
            if res != -2:
                return res
            two_byte = True  # an element does not fit the one-byte form; redo in two-byte

    def _write_elements(
        self, packet: bytes, profile: int, start: int, end: int, out: int, two_byte: bool
    ) -> int:
        """Copy kept elements with their new ids, then transport-cc, then pad to 32 bits.

        Returns the block end, ``out`` if nothing was written, -1 if malformed, -2 if an
        element cannot be expressed in the one-byte form (the caller retries in two-byte).
        """
        buf = self._buf
        ext_map = self._ext_map
        p = out + 4
        i = start
        if profile == ONE_BYTE_PROFILE:
            while i < end:
                byte = packet[i]
                eid = byte >> 4
                if eid == 0:  # RFC 8285 §4.2: padding
                    i += 1
                    continue
                if eid == 15:  # RFC 8285 §4.2: stop processing
                    break
                length = (byte & 0x0F) + 1
                if i + 1 + length > end:
                    return -1
                oid = ext_map[eid]
                if oid:
                    if two_byte:
                        buf[p] = oid
                        buf[p + 1] = length
                        p += 2
                    else:
                        buf[p] = (oid << 4) | (length - 1)
                        p += 1
                    buf[p : p + length] = packet[i + 1 : i + 1 + length]
                    p += length
                i += 1 + length
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            while i < end:
                eid = packet[i]
                if eid == 0:  # RFC 8285 §4.3: padding
                    i += 1
                    continue
                if i + 2 > end:
                    return -1
                length = packet[i + 1]
                if i + 2 + length > end:
                    return -1
                oid = ext_map[eid]
                if oid:
                    if two_byte:
                        buf[p] = oid
                        buf[p + 1] = length
                        p += 2
                    elif 1 <= length <= 16:
                        buf[p] = (oid << 4) | (length - 1)
                        p += 1
                    else:
                        return -2
                    buf[p : p + length] = packet[i + 2 : i + 2 + length]
                    p += length
                i += 2 + length
        twcc = self._twcc
        self.twcc_offset = -1
        if twcc is not None:
            seq = twcc.next_seq
            twcc.next_seq = (seq + 1) & 0xFFFF
            if two_byte:
                buf[p] = twcc.ext_id
                buf[p + 1] = 2
                p += 2
            else:
                buf[p] = (twcc.ext_id << 4) | 1
                p += 1
            _U16.pack_into(buf, p, seq)
            self.twcc_offset = p
            p += 2
        if p == out + 4:
            return out
        while (p - out) & 3:
            buf[p] = 0
            p += 1
        _EXT_HEADER.pack_into(
            buf, out, TWO_BYTE_PROFILE if two_byte else ONE_BYTE_PROFILE, (p - out - 4) >> 2
        )
        return p
