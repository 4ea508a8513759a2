"""Keyframe requests towards a publisher: the per-track throttle and FIR numbering.

Every subscriber that starts a video, loses packets it cannot repair or cannot decode asks for
a keyframe; a publisher that obeyed each request would send keyframes back to back and starve
its bitrate. The SFU therefore forwards at most one PLI/FIR per track per interval (issue 3:
"at most one per track per 500 ms"), and the keyframe that answers it serves every subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

from trio_sfu.proto.codecs import keyframe_detector
from trio_sfu.proto.rtp.packet import payload_offset

__all__ = ["KEYFRAME_WAIT", "FirSequence", "KeyframeGate", "KeyframeThrottle"]

T = TypeVar("T")

#: A new subscriber waits at most this long for a keyframe before it gets whatever comes (a
#: publisher that ignores PLI, or a payload the detectors cannot read, such as end-to-end
#: encrypted frames), so waiting never turns into a black screen.
KEYFRAME_WAIT: Final = 3.0



class KeyframeThrottle:
    """At most one keyframe request per ``min_interval`` seconds for one published track.

    A request refused by :meth:`allow` is remembered: if no keyframe arrives before the
    interval is over (:meth:`on_keyframe` not called), :meth:`due` grants it then, so a
    subscriber that joined right after another one's request still gets its keyframe promptly
    instead of waiting for its own retry. The driver arms a timer at :meth:`get_timer`.
    """

    __slots__ = ("_last", "_min_interval", "held", "pending", "sent", "suppressed")

    def __init__(self, min_interval: float = 0.5) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self._min_interval = min_interval
        self._last: float | None = None
        self.pending = False
        self.sent = 0
        self.suppressed = 0
        #: the publisher's media is not reaching us (its path moved on a check, its media
        #: has not come over the new one): a keyframe it sent now would be lost, and its
        #: encoder ignores a second request soon after (libwebrtc: 300 ms), so requests
        #: wait, pending, for :meth:`release`
        self.held = False

    def hold(self) -> None:
        self.held = True

    def release(self, now: float) -> None:
        """The publisher's media arrives again: ask now, whatever the interval, since what
        it sent while its path failed is lost (the caller sends the request)."""
        self.held = False
        self._last = now
        self.pending = False
        self.sent += 1

    def allow(self, now: float) -> bool:
        """True if a request may go to the publisher now (and counts as sent)."""
        last = self._last
        if not self.held and (last is None or now - last >= self._min_interval):
            self._last = now
            self.pending = False
            self.sent += 1
            return True
        self.pending = True
        self.suppressed += 1
        return False

    def on_keyframe(self) -> None:
        """A keyframe arrived from the publisher: it answers any refused request, which is
        therefore not sent when the interval ends (the driver watches for keyframes only while
        :attr:`pending` is set, so this costs nothing otherwise)."""
        self.pending = False

    def get_timer(self) -> float | None:
        """When a refused request becomes due; None if there is none."""
        if not self.pending or self._last is None or self.held:
            return None
        return self._last + self._min_interval

    def due(self, now: float) -> bool:
        """True if a refused request should be sent now (and counts as sent)."""
        if not self.pending or self.held:
            return False
        last = self._last
        if last is not None and now - last < self._min_interval:
            return False
        self._last = now
        self.pending = False
        self.sent += 1
        return True


class FirSequence:
    """The command sequence number of the FIRs one sender sends about one media source.

    RFC 5104 §4.3.1.1: the number is kept per (sender SSRC, target SSRC) pair, increased by 1
    modulo 256 for each new request, and not increased when a request is repeated; the
    initial value is arbitrary.
    """

    __slots__ = ("_seq",)

    def __init__(self, start: int = 0) -> None:
        self._seq = start & 0xFF

    @property
    def current(self) -> int:
        """The number of the last request: use it to repeat that request."""
        return self._seq

    def next_request(self) -> int:
        """The number for a new request."""
        self._seq = (self._seq + 1) & 0xFF
        return self._seq


class KeyframeGate(Generic[T]):
    """Down-tracks that joined a video track wait here until a keyframe starts, so the first
    frame a subscriber gets is one it can decode (and the keyframe also ends the track's
    throttle, :meth:`KeyframeThrottle.on_keyframe`).

    Sans-IO: the track calls :meth:`is_keyframe` and :meth:`release` per packet only while
    something waits (:attr:`waiting`) or a request is pending, so the detectors in
    ``proto/codecs`` cost nothing on the steady path.
    """

    __slots__ = ("_detectors", "_since", "waiting")

    def __init__(self, codecs: Iterable[tuple[int, str]]) -> None:
        """``codecs``: (payload type, SDP codec name) of the track's media formats."""
        self._detectors: dict[int, Callable[[bytes], bool]] = {}
        for pt, name in codecs:
            detector = keyframe_detector(name)
            if detector is not None:
                self._detectors[pt] = detector
        self.waiting: list[T] = []
        self._since: float | None = None

    @property
    def active(self) -> bool:
        """Whether this track has keyframes to wait for (a video codec we can read)."""
        return bool(self._detectors)

    def hold(self, item: T) -> None:
        self.waiting.append(item)

    def drop(self, item: T) -> None:
        self.waiting = [w for w in self.waiting if w is not item]
        if not self.waiting:
            self._since = None

    def is_keyframe(self, packet: bytes) -> bool:
        """Whether this RTP packet starts a keyframe (by its payload type's codec)."""
        detector = self._detectors.get(packet[1] & 0x7F)
        if detector is None:
            return False
        offset = payload_offset(packet)
        return offset >= 0 and detector(packet[offset:])

    def watch(self, packet: bytes, now: float, throttle: KeyframeThrottle) -> list[T]:
        """One packet of the track while something waits or a request is pending: a keyframe
        answers the throttle's pending request; returns the waiters to forward from this
        packet on (empty while they still wait: the caller asks for a keyframe again)."""
        keyframe = self.is_keyframe(packet)
        if keyframe:
            throttle.on_keyframe()
        return self.release(keyframe, now) if self.waiting else []

    def release(self, keyframe: bool, now: float) -> list[T]:
        """The waiters to forward from this packet on: all of them when it starts a keyframe
        or they waited :data:`KEYFRAME_WAIT`, else none."""
        if self._since is None:
            self._since = now
        if not keyframe and now - self._since < KEYFRAME_WAIT:
            return []
        released, self.waiting, self._since = self.waiting, [], None
        return released
