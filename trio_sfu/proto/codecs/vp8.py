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
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Vp8Descriptor",
    "is_keyframe",
    "parse_descriptor",
    "rewrite_descriptor",
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
