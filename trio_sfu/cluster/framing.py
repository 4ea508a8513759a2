"""The media relay's wire format: RTP packets packed into one NATS message.

Pure functions (no NATS, no asyncio), so the codec's fuzz suite and the tests can use them
without loading the bridge. Format: ``MEDIA_VERSION`` (one byte), then per packet a 2-byte
big-endian length and the packet.
"""

from __future__ import annotations

import struct
from collections import deque

MEDIA_VERSION = 1
_VERSION_BYTE = bytes((MEDIA_VERSION,))
_LENGTH = struct.Struct("!H")
#: RTP over UDP cannot exceed this (RFC 768 length field); the 2-byte prefix relies on it.
MAX_PACKET = 0xFFFF
#: Upper bound of one NATS message (the server's default max_payload is 1 MiB).
MAX_MESSAGE = 64 * 1024


def pack_packets(packets: deque[bytes], limit: int = MAX_MESSAGE) -> tuple[bytes, int, int]:
    """Take packets off the left of ``packets`` into one media message of at most ``limit``.

    Returns (message, packets packed, packets dropped as too large). At least one packet is
    taken per call even if it alone exceeds ``limit``, so the caller always makes progress.
    """
    parts = [_VERSION_BYTE]
    size = 1
    count = dropped = 0
    pack = _LENGTH.pack
    while packets:
        length = len(packets[0])
        if count and size + 2 + length > limit:
            break
        packet = packets.popleft()
        if length > MAX_PACKET:
            dropped += 1
            continue
        parts.append(pack(length))
        parts.append(packet)
        size += 2 + length
        count += 1
    return b"".join(parts), count, dropped


def unpack_packets(message: bytes) -> list[bytes]:
    """The packets of one media message; ValueError if it is not one of our version."""
    if not message or message[0] != MEDIA_VERSION:
        raise ValueError("not a media message of this version")
    view = memoryview(message)
    end = len(message)
    offset = 1
    packets = []
    unpack_from = _LENGTH.unpack_from
    while offset < end:
        if offset + 2 > end:
            raise ValueError("truncated length prefix")
        (length,) = unpack_from(message, offset)
        offset += 2
        if offset + length > end:
            raise ValueError("truncated packet")
        packets.append(bytes(view[offset : offset + length]))
        offset += length
    return packets
