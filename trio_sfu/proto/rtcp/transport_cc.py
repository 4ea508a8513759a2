"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

The message browsers' send-side bandwidth estimation lives on: for a run of transport-wide
sequence numbers, which packets arrived and when. Layout (§3.1): the RTPFB common part, base
sequence, status count, a 24-bit signed reference time in 64 ms units, a feedback packet
counter, packet status chunks, then one receive delta per received packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp._common import PT_RTPFB, TWO_U32, check_ssrc, pack_packet, truncated

FMT_TWCC: Final = 15

#: Receive deltas count 250 µs ticks; the reference time counts 64 ms (= 256 ticks).
DELTA_US: Final = 250
REFERENCE_US: Final = 64000

# §3.1.1 packet status symbols
_NOT_RECEIVED: Final = 0
_SMALL: Final = 1  # received, delta fits one unsigned byte (0..63.75 ms)
_LARGE: Final = 2  # received, delta needs two signed bytes (or is negative)

_RUN_MAX: Final = 0x1FFF  # §3.1.3: 13-bit run length
_HEAD: Final = struct.Struct("!HHI")

#: A packet as the feedback reports it: (transport sequence, received, delta in µs or None).
PacketStatus = tuple[int, bool, int | None]


@dataclass(slots=True)
class TransportCcFeedback:
    """One transport-cc feedback packet.

    ``packets`` lists every sequence number from ``base_seq`` on, in order, with its receive
    delta in microseconds (a multiple of 250) relative to the previous *received* packet, the
    first one relative to ``reference_time * 64 ms``.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int  # signed 24-bit, units of 64 ms
    fb_pkt_count: int
    packets: list[PacketStatus] = field(default_factory=list)

    @property
    def reference_us(self) -> int:
        """The reference time in microseconds: the first received packet's delta is from it."""
        return self.reference_time * REFERENCE_US

    def arrival_times_us(self) -> list[tuple[int, int | None]]:
        """``(sequence, arrival µs or None)`` on the feedback sender's clock, for estimators."""
        now = self.reference_us
        out: list[tuple[int, int | None]] = []
        for seq, received, delta in self.packets:
            if received and delta is not None:
                now += delta
                out.append((seq, now))
            else:
                out.append((seq, None))
        return out

    def serialize(self) -> bytes:
        count = len(self.packets)
        if not 1 <= count <= 0xFFFF:
            raise ValueError("transport-cc feedback needs 1..65535 packet statuses")
        if not -0x800000 <= self.reference_time <= 0x7FFFFF:
            raise ValueError("reference time is a signed 24-bit value")
        symbols = bytearray(count)
        deltas = bytearray()
        for i, (seq, received, delta_us) in enumerate(self.packets):
            if seq != (self.base_seq + i) & 0xFFFF:
                raise ValueError(f"packet {i} has sequence {seq}, expected base_seq + {i}")
            if not received:
                continue
            if delta_us is None:
                raise ValueError(f"received packet {seq} needs a delta")
            ticks = (delta_us + DELTA_US // 2) // DELTA_US
            if 0 <= ticks <= 0xFF:
                symbols[i] = _SMALL
                deltas.append(ticks)
            elif -0x8000 <= ticks <= 0x7FFF:
                symbols[i] = _LARGE
                deltas += (ticks & 0xFFFF).to_bytes(2, "big")
            else:
                raise ValueError(f"delta {delta_us} µs does not fit 16 signed bits of 250 µs")
        body = _header(self.sender_ssrc, self.media_ssrc) + _HEAD.pack(
            self.base_seq & 0xFFFF,
            count,
            ((self.reference_time & 0xFFFFFF) << 8) | (self.fb_pkt_count & 0xFF),
        )
        return pack_packet(PT_RTPFB, FMT_TWCC, body + encode_chunks(symbols) + deltas)

    @classmethod
    def parse(cls, body: bytes) -> TransportCcFeedback:
        n = len(body)
        if n < 16:
            raise truncated("transport-cc feedback")
        sender, media = TWO_U32.unpack_from(body, 0)
        base, count, ref_and_fb = _HEAD.unpack_from(body, 8)
        if count == 0:
            raise RtcpError("transport-cc feedback with zero packet statuses")
        reference = ref_and_fb >> 8
        if reference & 0x800000:
            reference -= 0x1000000
        symbols, pos = decode_chunks(body, 16, count)
        packets: list[PacketStatus] = []
        seq = base
        for symbol in symbols:
            if symbol == _NOT_RECEIVED:
                packets.append((seq, False, None))
            elif symbol == _SMALL:
                if pos >= n:
                    raise truncated("transport-cc receive deltas")
                packets.append((seq, True, body[pos] * DELTA_US))
                pos += 1
            else:
                if pos + 2 > n:
                    raise truncated("transport-cc receive deltas")
                ticks = (body[pos] << 8) | body[pos + 1]
                if ticks & 0x8000:
                    ticks -= 0x10000
                packets.append((seq, True, ticks * DELTA_US))
                pos += 2
            seq = (seq + 1) & 0xFFFF
        # Whatever follows the deltas is §3.1 zero padding.
        return cls(sender, media, base, reference, ref_and_fb & 0xFF, packets)


def _header(sender_ssrc: int, media_ssrc: int) -> bytes:
    check_ssrc(sender_ssrc, "sender SSRC")
    check_ssrc(media_ssrc, "media SSRC")
    return TWO_U32.pack(sender_ssrc, media_ssrc)


def encode_chunks(symbols: bytes | bytearray) -> bytes:
    """Encode status symbols into the fewest chunks a simple greedy pass finds (§3.1.3-3.1.4).

    A run of 14 or more equal symbols becomes a run-length chunk; otherwise 14 one-bit
    symbols go in a status vector when none of them needs a large delta; otherwise a run of
    at least 7 becomes a run-length chunk; otherwise 7 two-bit symbols share a vector. The
    last vector may describe symbols beyond the status count; they are zero (not received),
    which receivers ignore.
    """
    out = bytearray()
    n = len(symbols)
    i = 0
    while i < n:
        first = symbols[i]
        run = 1
        while i + run < n and run < _RUN_MAX and symbols[i + run] == first:
            run += 1
        if run >= 14 or (run == n - i and run > 7):
            out += ((first << 13) | run).to_bytes(2, "big")
            i += run
            continue
        window = symbols[i : i + 14]
        if _LARGE not in window:
            chunk = 0x8000
            for k, symbol in enumerate(window):
                chunk |= symbol << (13 - k)
            out += chunk.to_bytes(2, "big")
            i += len(window)
        elif run >= 7:
            out += ((first << 13) | run).to_bytes(2, "big")
            i += run
        else:
            chunk = 0xC000
            for k, symbol in enumerate(symbols[i : i + 7]):
                chunk |= symbol << (12 - 2 * k)
            out += chunk.to_bytes(2, "big")
            i += 7
    return bytes(out)


def decode_chunks(body: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """Read chunks from ``pos`` until ``count`` symbols are known; return them and the new pos."""
    symbols: list[int] = []
    n = len(body)
    while len(symbols) < count:
        if pos + 2 > n:
            raise truncated("transport-cc packet status chunks")
        chunk = (body[pos] << 8) | body[pos + 1]
        pos += 2
        left = count - len(symbols)
        if not chunk & 0x8000:  # §3.1.3 run length chunk
            symbol = (chunk >> 13) & 0x3
            if symbol == 3:
                raise RtcpError("transport-cc run length chunk uses the reserved symbol")
            symbols.extend([symbol] * min(chunk & _RUN_MAX, left))
        elif not chunk & 0x4000:  # §3.1.4 one-bit status vector
            for k in range(min(14, left)):  # (a loop: a generator costs a frame per chunk)
                symbols.append((chunk >> (13 - k)) & 1)
        else:  # §3.1.4 two-bit status vector
            for k in range(min(7, left)):
                symbol = (chunk >> (12 - 2 * k)) & 0x3
                if symbol == 3:
                    raise RtcpError("transport-cc status vector uses the reserved symbol")
                symbols.append(symbol)
    return symbols, pos
