"""The per-stream packet cache that answers subscribers' NACKs (RFC 4585 §6.2.1).

One cache per published video stream, in the publisher's numbering: the SFU stores every packet
it receives and, when a subscriber NACKs, maps the subscriber's sequence number back with
:meth:`RtpRewriter.to_input_sequence`, fetches the original here and re-sends it through
:meth:`RtpRewriter.rewrite_as` (wrapped in RTX when negotiated). Sharing one cache across all
subscribers of a stream keeps memory per stream, not per subscriber.
"""

from __future__ import annotations

import struct
from typing import Final

from trio_sfu.proto.rtp.packet import seq_delta

__all__ = ["PacketCache"]

_U16: Final = struct.Struct("!H")
_EMPTY: Final = -(1 << 62)


class PacketCache:
    """A preallocated ring of the last ``capacity`` packets, keyed by extended sequence number.

    Both :meth:`put` and :meth:`get` are O(1) and allocate nothing. Each slot remembers the
    extended (unwrapped, RFC 3550 A.1) sequence number of its packet, so a lookup only hits
    the packet it asks for: an entry 65536 packets older with the same 16-bit number, or one
    overwritten by a newer packet, is a miss. A packet arriving more than ``capacity`` behind
    the newest is not stored (it would evict a newer one), unless two such packets in sequence
    show the sender restarted its numbering, which starts the cache afresh (RFC 3550 A.1's
    ``bad_seq`` rule).
    """

    __slots__ = ("_bad_seq", "_capacity", "_highest", "_packets", "_seqs", "_started")

    def __init__(self, capacity: int = 1024) -> None:
        if not 1 <= capacity <= 0x8000:
            # More than half the sequence space could not tell old from new.
            raise ValueError("capacity must be 1..32768")
        self._capacity = capacity
        self._packets: list[bytes | None] = [None] * capacity
        self._seqs = [_EMPTY] * capacity
        self._highest = 0
        self._started = False
        self._bad_seq = -1

    @property
    def capacity(self) -> int:
        return self._capacity

    def put(self, packet: bytes) -> None:
        """Store one RTP packet (too short to carry a sequence number: ignored)."""
        if len(packet) < 12:
            return
        seq = _U16.unpack_from(packet, 2)[0]
        highest = self._highest
        if not self._started:
            self._started = True
            ext = highest = seq
        else:
            # in order, the common case, without a call
            diff = 1 if seq == (highest + 1) & 0xFFFF else seq_delta(seq, highest)
            ext = highest + diff
            if diff <= -self._capacity:
                if seq != self._bad_seq:
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return
                self.clear()  # two in a row: the sender restarted its numbering
                self._started = True
                ext = highest = seq
        if ext > highest:
            self._highest = ext
        else:
            self._highest = highest
        slot = ext % self._capacity
        self._seqs[slot] = ext
        self._packets[slot] = packet

    def get(self, seq: int) -> bytes | None:
        """The stored packet with 16-bit sequence number ``seq``, or None."""
        if not self._started:
            return None
        highest = self._highest
        ext = highest + seq_delta(seq, highest)
        slot = ext % self._capacity
        if self._seqs[slot] != ext:
            return None
        return self._packets[slot]

    def clear(self) -> None:
        """Forget every packet (e.g. the publisher's stream restarted)."""
        capacity = self._capacity
        self._packets = [None] * capacity
        self._seqs = [_EMPTY] * capacity
        self._highest = 0
        self._started = False
        self._bad_seq = -1
