"""H.264 RTP payloads (RFC 6184): NAL unit types and keyframe detection.

Browsers use packetization-mode 1 (§6.3): a payload is a single NAL unit (types 1-23), a
STAP-A aggregate (24, §5.7.1) or an FU-A fragment (28, §5.8). Interleaved-mode types (STAP-B,
MTAP, FU-B) are reported but never count as keyframes.

A packet counts as a keyframe start when it begins an IDR slice (type 5) or carries an SPS
(type 7): browsers send SPS and PPS just before each IDR, often in a STAP-A of their own, and
a forwarder that resumes a stream at the IDR slice would skip the parameter sets the decoder
needs first.
"""

from __future__ import annotations

__all__ = ["NAL_IDR", "NAL_PPS", "NAL_SPS", "is_keyframe", "nal_types"]

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
_STAP_A = 24
_FU_A = 28


def nal_types(payload: bytes) -> list[int]:
    """Types of the NAL units that start in this payload (empty for garbage).

    A STAP-A lists every aggregated unit; an FU-A yields its unit's type only on the start
    fragment (S bit), since the others continue a unit begun earlier.
    """
    n = len(payload)
    if n < 1 or payload[0] & 0x80:  # §5.3: the forbidden_zero_bit must be 0
        return []
    kind = payload[0] & 0x1F
    if kind == _STAP_A:
        types = []
        pos = 1
        while pos + 2 < n:
            size = (payload[pos] << 8) | payload[pos + 1]
            if size == 0 or pos + 2 + size > n:
                return []  # malformed aggregate: trust none of it
            types.append(payload[pos + 2] & 0x1F)
            pos += 2 + size
        return types if pos == n else []
    if kind == _FU_A:
        if n < 2 or not payload[1] & 0x80:  # S bit of the FU header
            return []
        return [payload[1] & 0x1F]
    if kind == 0:
        return []  # type 0 is unspecified
    return [kind]


def is_keyframe(payload: bytes) -> bool:
    """True if this payload starts an IDR picture or carries the SPS that precedes one."""
    types = nal_types(payload)
    return NAL_IDR in types or NAL_SPS in types
