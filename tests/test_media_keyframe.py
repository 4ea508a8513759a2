"""Keyframe request throttling per track and FIR command sequence numbers."""

from __future__ import annotations

import pytest

from trio_sfu.sfu.feedback import FirSequence, KeyframeGate, KeyframeThrottle
from trio_sfu.sfu.feedback.keyframe import KEYFRAME_WAIT


def test_at_most_one_request_per_interval() -> None:
    throttle = KeyframeThrottle(0.5)
    times = [0.0, 0.1, 0.2, 0.49, 0.5, 0.7, 0.99, 1.0, 10.0]
    allowed = [t for t in times if throttle.allow(t)]
    assert allowed == [0.0, 0.5, 1.0, 10.0]
    assert (throttle.sent, throttle.suppressed) == (4, 5)


def test_refused_request_is_sent_when_the_interval_ends() -> None:
    throttle = KeyframeThrottle(0.5)
    assert throttle.get_timer() is None
    assert throttle.allow(0.0)
    assert throttle.get_timer() is None  # nothing refused yet
    assert not throttle.allow(0.3)  # a second subscriber asks right after the first
    assert throttle.get_timer() == 0.5
    assert not throttle.due(0.4)
    assert throttle.due(0.5)
    assert throttle.get_timer() is None and not throttle.due(0.6)
    assert not throttle.allow(0.7)  # throttled again from the deferred request's send time
    assert throttle.allow(1.0)


def test_keyframe_arrival_answers_a_refused_request() -> None:
    throttle = KeyframeThrottle(0.5)
    throttle.allow(0.0)
    throttle.allow(0.2)
    throttle.on_keyframe()  # the keyframe asked at 0.0 came, after the second request
    assert throttle.get_timer() is None
    assert not throttle.due(0.6)
    assert throttle.sent == 1


def test_held_requests_wait_for_the_publishers_media_and_then_go_at_once() -> None:
    """The publisher's path moved on a check and its media has not come over the new one:
    a keyframe it sent would be lost, so requests wait; when its media comes, one request goes
    at once whatever the interval (the caller sends it), and the throttle runs from there."""
    throttle = KeyframeThrottle(0.5)
    assert throttle.allow(0.0)
    throttle.hold()
    assert not throttle.allow(0.6) and throttle.pending
    assert throttle.get_timer() is None and not throttle.due(5.0)
    throttle.release(5.1)
    assert not throttle.pending and not throttle.held and throttle.sent == 2
    assert not throttle.allow(5.3)  # the release's request counts
    assert throttle.due(5.6)


def test_throttle_arguments() -> None:
    with pytest.raises(ValueError):
        KeyframeThrottle(-1)
    zero = KeyframeThrottle(0)
    assert all(zero.allow(0.0) for _ in range(3))


def test_fir_sequence_increments_per_new_request_and_wraps() -> None:
    # RFC 5104 §4.3.1.1: +1 modulo 256 per new request, unchanged for a repetition.
    fir = FirSequence(start=254)
    assert fir.current == 254
    assert fir.next_request() == 255
    assert fir.current == 255  # a repetition reuses it
    assert fir.next_request() == 0
    assert fir.next_request() == 1
    assert FirSequence(start=0x1FF).current == 0xFF


# -- the gate: new subscribers start at a keyframe ----------------------------------------------

VP8_KEY = bytes([0x80, 96, 0, 1]) + bytes(8) + b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + bytes(20)
VP8_DELTA = bytes([0x80, 96, 0, 2]) + bytes(8) + b"\x10" + b"\x01" + bytes(20)


def test_gate_holds_until_a_keyframe_starts() -> None:
    gate: KeyframeGate[str] = KeyframeGate([(96, "VP8"), (97, "rtx")])
    assert gate.active
    gate.hold("bob")
    throttle = KeyframeThrottle(0.5)
    assert gate.watch(VP8_DELTA, 1.0, throttle) == []
    assert gate.waiting == ["bob"]
    assert gate.watch(VP8_KEY, 1.1, throttle) == ["bob"]
    assert gate.waiting == []


def test_gate_keyframe_ends_a_pending_request() -> None:
    gate: KeyframeGate[str] = KeyframeGate([(96, "VP8")])
    throttle = KeyframeThrottle(0.5)
    assert throttle.allow(0.0) and not throttle.allow(0.1)
    assert throttle.pending
    gate.watch(VP8_DELTA, 0.2, throttle)
    assert throttle.pending
    gate.watch(VP8_KEY, 0.3, throttle)
    assert not throttle.pending and throttle.get_timer() is None and not throttle.due(0.6)


def test_gate_gives_up_waiting_after_keyframe_wait() -> None:
    """A publisher that ignores PLI, or frames the detectors cannot read (E2EE), must not
    leave a subscriber black forever."""
    gate: KeyframeGate[str] = KeyframeGate([(96, "VP8")])
    throttle = KeyframeThrottle(0.5)
    gate.hold("bob")
    assert gate.watch(VP8_DELTA, 10.0, throttle) == []
    assert gate.watch(VP8_DELTA, 10.0 + KEYFRAME_WAIT - 0.01, throttle) == []
    assert gate.watch(VP8_DELTA, 10.0 + KEYFRAME_WAIT, throttle) == ["bob"]


def test_gate_is_inactive_for_audio_and_unknown_codecs() -> None:
    assert not KeyframeGate([(111, "opus")]).active
    assert not KeyframeGate([(100, "x-unknown")]).active
    gate: KeyframeGate[str] = KeyframeGate([(96, "VP8")])
    gate.hold("a")
    gate.hold("b")
    gate.drop("a")
    assert gate.waiting == ["b"]
    # A packet of another payload type (RTX, or a codec we cannot read) is not a keyframe.
    assert not gate.is_keyframe(bytes([0x80, 97]) + VP8_KEY[2:])
