"""Greedy packing of encoded chunks into packets no larger than the path MTU budget.

Shared by the association (control chunks) and the sender (DATA) so that a SACK, a FORWARD TSN
and the first DATA chunks travel in one DTLS record whenever they fit (RFC 9260 §6.10 bundling).
"""

from __future__ import annotations

from .chunks import COMMON_HEADER_SIZE


class PacketBuilder:
    __slots__ = ("_cur", "_room", "mtu", "packets")

    def __init__(self, mtu: int) -> None:
        self.mtu = mtu
        self.packets: list[list[bytes]] = []
        self._cur: list[bytes] = []
        self._room = mtu - COMMON_HEADER_SIZE

    @property
    def room(self) -> int:
        """Bytes left in the packet being filled (a new packet starts when a chunk won't fit)."""
        return self._room

    @property
    def empty(self) -> bool:
        return not self._cur

    def add(self, chunk: bytes) -> None:
        size = len(chunk)
        size += (4 - (size & 3)) & 3
        if size > self._room and self._cur:
            self.flush()
        self._cur.append(chunk)
        self._room -= size

    def flush(self) -> None:
        if self._cur:
            self.packets.append(self._cur)
            self._cur = []
            self._room = self.mtu - COMMON_HEADER_SIZE

    def finish(self) -> list[list[bytes]]:
        self.flush()
        return self.packets
