"""VP8 RTP payload descriptor (RFC 7741 §4.2) and keyframe detection (§4.3).

::

     0 1 2 3 4 5 6 7
    |X|R|N|S|R| PID |   required
    |I|L|T|K|  RSV  |   if X
    |M| PictureID   |   if I (M=1: 15-bit picture id over two bytes)
    |  TL0PICIDX    |   if L
    |TID|Y| KEYIDX  |   if T or K

Detection never raises: garbage gives ``None``/``False``, because a forwarder asks this of
every packet of every stream and must not be taken down by one odd publisher.
:func:`build_payload` goes the other way, for the synthetic publishers of tests and load runs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PictureIdRewriter",
    "Vp8Descriptor",
    "build_payload",
    "is_keyframe",
    "keyframe_width",
    "parse_descriptor",
    "rewrite_descriptor",
    "temporal_info",
]


@dataclass(slots=True)
class Vp8Descriptor:
    """The parsed payload descriptor; offsets let a rewriter patch fields in place."""

    start_of_partition: bool
    partition_id: int
    non_reference: bool
    picture_id: int | None = None
    picture_id_15bit: bool = False
    tl0_pic_idx: int | None = None
    tid: int | None = None
    layer_sync: bool = False
    key_idx: int | None = None
    size: int = 1  # descriptor length: the VP8 payload header starts here
    picture_id_offset: int = -1
    tl0_pic_idx_offset: int = -1


def parse_descriptor(payload: bytes) -> Vp8Descriptor | None:
    """Parse the descriptor at the start of an RTP payload, or None if it is truncated."""
    n = len(payload)
    if n < 1:
        return None
    b = payload[0]
    desc = Vp8Descriptor(
        start_of_partition=bool(b & 0x10), partition_id=b & 0x0F, non_reference=bool(b & 0x20)
    )
    pos = 1
    if b & 0x80:  # X
        if pos >= n:
            return None
        x = payload[pos]
        pos += 1
        if x & 0x80:  # I
            if pos >= n:
                return None
            desc.picture_id_offset = pos
            if payload[pos] & 0x80:  # M: 15-bit picture id
                if pos + 1 >= n:
                    return None
                desc.picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                desc.picture_id_15bit = True
                pos += 2
            else:
                desc.picture_id = payload[pos] & 0x7F
                pos += 1
        if x & 0x40:  # L
            if pos >= n:
                return None
            desc.tl0_pic_idx_offset = pos
            desc.tl0_pic_idx = payload[pos]
            pos += 1
        if x & 0x30:  # T or K share one byte
            if pos >= n:
                return None
            tk = payload[pos]
            if x & 0x20:
                desc.tid = tk >> 6
                desc.layer_sync = bool(tk & 0x20)
            if x & 0x10:
                desc.key_idx = tk & 0x1F
            pos += 1
    desc.size = pos
    return desc


def temporal_info(packet: bytes, offset: int) -> tuple[int, bool, bool] | None:
    """(TID, Y, start of a frame) of an RTP packet whose VP8 payload starts at ``offset``, if
    it carries temporal-layer fields (RFC 7741 §4.2: X, then T); read in place from the first
    bytes only (no copy): the per-packet form for an SFU that drops temporal layers. None
    without them (one layer: nothing to drop) or if truncated."""
    n = len(packet)
    if offset < 0 or n < offset + 2 or not packet[offset] & 0x80:  # no X: no temporal fields
        return None
    x = packet[offset + 1]
    if not x & 0x20:  # no T
        return None
    pos = offset + 2
    if x & 0x80:  # I: a 7- or 15-bit picture id
        if pos >= n:
            return None
        pos += 2 if packet[pos] & 0x80 else 1
    if x & 0x40:  # L: TL0PICIDX
        pos += 1
    if pos >= n:
        return None
    b = packet[pos]
    first = packet[offset]
    start = bool(first & 0x10) and first & 0x0F == 0
    return b >> 6, bool(b & 0x20), start


def is_keyframe(payload: bytes) -> bool:
    """True for the first packet of a key frame.

    RFC 7741 §4.3: at the start of partition 0 the VP8 payload header follows the descriptor,
    and its P bit (bit 0 of the first byte) is 0 for a key frame. The key frame start code
    0x9d 0x01 0x2a (RFC 6386 §9.1) is checked as well, so stray bytes are not mistaken for one.
    """
    desc = parse_descriptor(payload)
    if desc is None or not desc.start_of_partition or desc.partition_id != 0:
        return False
    pos = desc.size
    return (
        len(payload) >= pos + 6
        and payload[pos] & 0x01 == 0
        and payload[pos + 3 : pos + 6] == b"\x9d\x01\x2a"
    )


def keyframe_width(payload: bytes) -> int:
    """The frame width a keyframe's first packet announces (RFC 6386 §9.1: 14 bits, little
    endian, after the start code), or 0 if ``payload`` does not start a keyframe."""
    if not is_keyframe(payload):
        return 0
    desc = parse_descriptor(payload)
    pos = (desc.size if desc is not None else 1) + 6
    if len(payload) < pos + 2:
        return 0
    return (payload[pos] | (payload[pos + 1] << 8)) & 0x3FFF


#: RFC 6386 §9.1 frame tag of a keyframe (P=0, version 0, show_frame=1, a 16-byte first
#: partition), then the keyframe start code; the 14-bit width and height follow.
_KEYFRAME_HEADER: Final = b"\x10\x02\x00\x9d\x01\x2a"
#: RFC 6386 §9.1 frame tag of an interframe (P=1, version 0, show_frame=1).
_INTERFRAME_HEADER: Final = b"\x11\x00\x00"
_DIMENSIONS: Final = struct.Struct("<HH")


def build_payload(
    size: int,
    *,
    keyframe: bool,
    start: bool = True,
    picture_id: int | None = None,
    width: int = 0,
    height: int = 0,
    body: bytes = b"",
) -> bytes:
    """A synthetic VP8 RTP payload of ``size`` bytes (longer only if its headers and ``body``
    need more), shaped like VP8 to anything that peeks at it without decoding: a forwarder's
    :func:`is_keyframe`, :func:`keyframe_width` and :class:`PictureIdRewriter`.

    The RFC 7741 §4.2 descriptor has S=1 and partition 0 when ``start`` (the packet that
    begins a frame); with ``picture_id`` it has X=1, I=1 and a 15-bit picture id (M=1, as
    libwebrtc sends it), else it is one byte. A frame's first packet then carries the payload
    header (RFC 7741 §4.3): the RFC 6386 §9.1 frame tag, and for a keyframe the start code
    and ``width`` × ``height``. ``body`` follows (a load test's send-time stamp), then zeros.
    """
    if picture_id is None:
        head = b"\x10" if start else b"\x00"
    else:
        head = bytes(
            (0x90 if start else 0x80, 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF)
        )
    if start:
        if keyframe:
            head += _KEYFRAME_HEADER + _DIMENSIONS.pack(width & 0x3FFF, height & 0x3FFF)
        else:
            head += _INTERFRAME_HEADER
    head += body
    return head + bytes(max(0, size - len(head)))


def rewrite_descriptor(
    payload: bytearray | memoryview,
    picture_id: int | None = None,
    tl0_pic_idx: int | None = None,
) -> bool:
    """Overwrite picture id and/or TL0PICIDX in place, keeping each field's width.

    Used when switching simulcast layers so the subscriber sees continuous numbering. A
    7-bit picture id keeps 7 bits (the value is reduced modulo 128). Returns False, changing
    nothing, if a requested field is absent or the descriptor is malformed.
    """
    desc = parse_descriptor(bytes(payload[:6]))
    if desc is None:
        return False
    if (picture_id is not None and desc.picture_id_offset < 0) or (
        tl0_pic_idx is not None and desc.tl0_pic_idx_offset < 0
    ):
        return False
    if picture_id is not None:
        pos = desc.picture_id_offset
        if desc.picture_id_15bit:
            payload[pos] = 0x80 | ((picture_id >> 8) & 0x7F)
            payload[pos + 1] = picture_id & 0xFF
        else:
            payload[pos] = picture_id & 0x7F
    if tl0_pic_idx is not None:
        payload[desc.tl0_pic_idx_offset] = tl0_pic_idx & 0xFF
    return True


#: the slots of :class:`PictureIdRewriter`, which its ``clone`` copies (a class compiled by mypyc
#: has no ``__slots__`` to read at run time: docs/architecture.md, "Compiled")
_PICTURE_ID_FIELDS: Final = ("_last_pid", "_last_tl0", "_pending", "_pid_off", "_tl0_off")


class PictureIdRewriter:
    """Continuous picture ids and TL0PICIDX for a subscriber whose source stream changes.

    Each simulcast stream of a VP8 track numbers its pictures on its own (RFC 7741 §4.2), and
    a receiver orders frames by picture id: after a switch to another stream its frames
    would look older or far newer than the last decoded one, and libwebrtc's frame buffer
    drops "old" frames. So a forwarding group that switches streams passes each packet
    through one of these: after :meth:`switch`, the first packet of the new stream gets the
    last output picture id + 1 (and TL0PICIDX + 1) and later ones keep that offset. Before
    the first switch ids pass unchanged. Packets without the fields pass untouched.
    """

    __slots__ = _PICTURE_ID_FIELDS

    def __init__(self) -> None:
        self._pid_off = 0
        self._tl0_off = 0
        self._last_pid = -1
        self._last_tl0 = -1
        self._pending = False

    def clone(self) -> PictureIdRewriter:
        """An independent copy (a subscriber leaving its forwarding group continues it)."""
        twin = PictureIdRewriter()
        for name in _PICTURE_ID_FIELDS:
            setattr(twin, name, getattr(self, name))
        return twin

    def switch(self) -> None:
        """The next packet starts another stream: continue the numbering from it."""
        self._pending = self._last_pid >= 0

    def skip_frame(self) -> None:
        """A frame was dropped whole (a temporal layer above the subscriber's): close the
        gap its picture id would leave, as libwebrtc waits for a missing picture id that might
        be a lower layer's. TL0PICIDX needs nothing: T0 frames are never dropped."""
        self._pid_off -= 1

    def rewrite(self, packet: bytes, offset: int, *, resend: bool = False) -> bytes:
        """``packet`` (an RTP packet whose VP8 payload starts at ``offset``) renumbered.

        ``resend``: the packet was forwarded before (a NACKed packet from the cache): it gets
        the numbers it had, and the state does not move. A retransmission that skipped this
        would carry the source stream's own picture id and break the receiver's frame.
        """
        desc = parse_descriptor(packet[offset : offset + 6])
        if desc is None or desc.picture_id is None:
            return packet
        pid = desc.picture_id
        tl0 = desc.tl0_pic_idx
        if resend:
            mask = 0x7FFF if desc.picture_id_15bit else 0x7F
            out_pid = (pid + self._pid_off) & mask
            out_tl0 = None if tl0 is None else (tl0 + self._tl0_off) & 0xFF
            if out_pid == pid and out_tl0 == tl0:
                return packet
            out = bytearray(packet)
            rewrite_descriptor(memoryview(out)[offset:], out_pid, out_tl0)
            return bytes(out)
        if self._pending:
            self._pending = False
            self._pid_off = self._last_pid + 1 - pid
            if tl0 is not None and self._last_tl0 >= 0:
                self._tl0_off = self._last_tl0 + 1 - tl0
        mask = 0x7FFF if desc.picture_id_15bit else 0x7F
        out_pid = (pid + self._pid_off) & mask
        if self._last_pid < 0 or (out_pid - self._last_pid) & mask <= mask >> 1:
            self._last_pid = out_pid  # the newest (a late packet leaves it)
        out_tl0 = None
        if tl0 is not None:
            out_tl0 = (tl0 + self._tl0_off) & 0xFF
            if self._last_tl0 < 0 or (out_tl0 - self._last_tl0) & 0xFF < 0x80:
                self._last_tl0 = out_tl0
        if out_pid == pid and out_tl0 == tl0:
            return packet
        out = bytearray(packet)
        rewrite_descriptor(memoryview(out)[offset:], out_pid, out_tl0)
        return bytes(out)
