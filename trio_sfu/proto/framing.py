"""RFC 4571 framing: datagrams over a TCP byte stream, as ICE-TCP uses it (RFC 6544 §3).

Each datagram travels as a 16-bit big-endian length followed by that many bytes (RFC 4571
§2). TCP may deliver any split or coalescing of those bytes, so the deframer keeps the partial
tail between reads; it never holds more than one unfinished frame (at most 2 + 65535 bytes),
which bounds the memory a connection can make us keep, whatever it sends.

Sans-IO: bytes in, datagrams out; the Trio driver is ``trio_sfu/rtc/tcp.py``.
"""

from __future__ import annotations

#: RFC 4571 §2: the length field is 16 bits.
MAX_FRAME = 0xFFFF
HEADER = 2


def frame(datagram: bytes) -> bytes:
    """One datagram as it goes on the stream (ValueError above 65535 bytes)."""
    n = len(datagram)
    if n > MAX_FRAME:
        raise ValueError(f"an RFC 4571 frame holds at most {MAX_FRAME} bytes, not {n}")
    return n.to_bytes(2, "big") + datagram


class Deframer:
    """Splits a byte stream back into the datagrams it carries.

    ``feed`` accepts whatever a ``recv`` returned and returns every datagram it completed.
    A zero-length frame is legal framing (RFC 4571 does not forbid it) and gives ``b""``;
    the caller decides what an empty datagram means (RFC 7983 demux drops it).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished frame (bounded by 2 + 65535)."""
        return len(self._buf)

    @property
    def awaiting(self) -> int | None:
        """The declared length of the unfinished frame (None until its 2-byte header is in):
        lets a driver refuse a frame by its announced size before buffering it."""
        buf = self._buf
        return (buf[0] << 8) | buf[1] if len(buf) >= HEADER else None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Append ``data`` and return every datagram it completed, in order (one list per
        read, not per datagram; a list rather than a generator so the state is consistent
        whatever the caller does with the result)."""
        out: list[bytes] = []
        buf = self._buf
        buf += data
        start = 0
        end = len(buf)
        while end - start >= HEADER:
            n = (buf[start] << 8) | buf[start + 1]
            stop = start + HEADER + n
            if stop > end:
                break
            out.append(bytes(buf[start + HEADER : stop]))
            start = stop
        if start:
            del buf[:start]
        return out
