"""Path liveness while idle (RFC 9260 §8.3).

When no DATA is outstanding the retransmission timer is not watching the path, so every
HB.interval + RTO (± half an RTO of jitter) we send a HEARTBEAT and expect its ACK within one RTO.
Only our random nonce in the echoed info is trusted; the RTT comes from our own send time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .chunks import HeartbeatChunk

_INFO = struct.Struct("!d8s")


class Heartbeat:
    __slots__ = ("_interval", "_nonce", "_rng", "_sent_at", "ack_deadline", "acks", "deadline",
                 "sent")

    def __init__(self, interval: float, rng: Callable[[int], bytes]) -> None:
        self._interval = interval
        self._rng = rng
        self._nonce = b""
        self._sent_at = 0.0
        self.deadline: float | None = None
        self.ack_deadline: float | None = None
        self.sent = 0
        self.acks = 0

    def schedule(self, now: float, rto: float) -> None:
        jitter = (int.from_bytes(self._rng(2), "big") / 65535.0 - 0.5) * rto
        self.deadline = now + self._interval + rto + jitter

    def stop(self) -> None:
        self.deadline = self.ack_deadline = None

    def fire(self, now: float, rto: float, idle: bool) -> bytes | None:
        """The interval elapsed: an encoded HEARTBEAT if the path is idle, else nothing."""
        self.schedule(now, rto)
        if not idle:
            return None  # DATA is outstanding: T3 watches the path
        self._nonce = self._rng(8)
        self._sent_at = now
        self.sent += 1
        if self.ack_deadline is None:
            self.ack_deadline = now + rto
        return HeartbeatChunk(_INFO.pack(now, self._nonce)).encode()

    def on_ack(self, info: bytes, now: float) -> float | None:
        """The RTT if this HEARTBEAT ACK answers our latest HEARTBEAT."""
        if not self._nonce or len(info) != _INFO.size or info[8:] != self._nonce:
            return None
        self._nonce = b""
        self.ack_deadline = None
        self.acks += 1
        return now - self._sent_at
