"""AV1 RTP payloads (AV1 RTP specification v1.0, §4.4-4.5): aggregation header and OBUs.

::

     0 1 2 3 4 5 6 7
    |Z|Y| W |N|-|-|-|   aggregation header

Z: the first OBU element continues an OBU from the previous packet; Y: the last one continues
in the next; W: number of OBU elements (0 = each carries a LEB128 length; 1-3 = all but the
last do); N: first packet of a coded video sequence, i.e. of a keyframe the decoder can start
from. Nothing here raises on garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OBU_SEQUENCE_HEADER", "Av1Payload", "is_keyframe", "parse_payload"]

OBU_SEQUENCE_HEADER = 1  # AV1 bitstream §6.2.2 obu_type
OBU_TEMPORAL_DELIMITER = 2
OBU_FRAME = 6


@dataclass(slots=True)
class Av1Payload:
    continuation: bool  # Z
    continues: bool  # Y
    element_count: int  # W
    new_sequence: bool  # N
    # OBU type of every element that starts an OBU here (a Z-continued first one does not).
    obu_types: list[int] = field(default_factory=list)
    temporal_id: int | None = None  # from the first OBU extension header seen
    spatial_id: int | None = None


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    """Decode LEB128 (AV1 §4.10.5) at ``pos``: (value, new pos), or (-1, pos) if invalid."""
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            return -1, pos
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    return -1, pos


def parse_payload(payload: bytes) -> Av1Payload | None:
    """Parse the aggregation header and walk the OBU elements; None if malformed."""
    n = len(payload)
    if n < 1:
        return None
    head = payload[0]
    count = (head >> 4) & 0x03
    info = Av1Payload(
        continuation=bool(head & 0x80),
        continues=bool(head & 0x40),
        element_count=count,
        new_sequence=bool(head & 0x08),
    )
    pos = 1
    index = 0
    while pos < n:
        if count and index == count - 1:
            size = n - pos  # the last of W elements has no length field
        else:
            size, pos = _leb128(payload, pos)
            if size < 0 or pos + size > n:
                return None
        if size and not (index == 0 and info.continuation):
            obu = payload[pos]
            if obu & 0x80:  # AV1 §5.3.1: obu_forbidden_bit
                return None
            info.obu_types.append((obu >> 3) & 0x0F)
            if obu & 0x04 and pos + 1 < n and info.temporal_id is None:
                info.temporal_id = payload[pos + 1] >> 5
                info.spatial_id = (payload[pos + 1] >> 3) & 0x03
        pos += size
        index += 1
        if count and index == count:
            break
    if count and index != count:
        return None
    return info


def is_keyframe(payload: bytes) -> bool:
    """True when a new coded video sequence starts here (N bit) or a sequence header OBU
    begins in this packet; either way a decoder can start from this temporal unit."""
    info = parse_payload(payload)
    if info is None:
        return False
    return (info.new_sequence and not info.continuation) or OBU_SEQUENCE_HEADER in info.obu_types
