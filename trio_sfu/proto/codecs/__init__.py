"""Codec payload inspection: keyframe and layer detection without decoding."""

from __future__ import annotations

from collections.abc import Callable

from trio_sfu.proto.codecs import av1, av1_dd, h264, vp8, vp9

__all__ = ["av1", "av1_dd", "h264", "is_keyframe", "keyframe_detector", "vp8", "vp9"]

_DETECTORS: dict[str, Callable[[bytes], bool]] = {
    "VP8": vp8.is_keyframe,
    "VP9": vp9.is_keyframe,
    "H264": h264.is_keyframe,
    "AV1": av1.is_keyframe,
    "AV1X": av1.is_keyframe,  # the name early Chromium builds negotiated
}


def keyframe_detector(codec_name: str) -> Callable[[bytes], bool] | None:
    """The codec's keyframe test on an RTP payload, by SDP name; None for audio and unknown
    codecs (nothing to wait for). Resolved once per track so the per-packet call is direct."""
    return _DETECTORS.get(codec_name.upper())


def is_keyframe(codec_name: str, payload: bytes) -> bool:
    """Whether an RTP payload starts a keyframe, by the codec's SDP name (case-insensitive).

    Audio and unknown codecs give False: they have no keyframes to wait for.
    """
    detector = _DETECTORS.get(codec_name.upper())
    return detector is not None and detector(payload)
