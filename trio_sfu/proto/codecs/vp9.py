"""VP9 RTP payload descriptor (draft-ietf-payload-vp9-16 §4.2, now RFC 9628) and keyframes.

::

     0 1 2 3 4 5 6 7
    |I|P|L|F|B|E|V|Z|   required
    |M| PICTURE ID  |   if I (M=1: one more byte, 15-bit id)
    | TID |U| SID |D|   if L
    |   TL0PICIDX   |   if L and not F (non-flexible mode)
    | P_DIFF      |N|   if P and F, up to 3 times while N
    | SS ...        |   if V (scalability structure, §4.2.1)

The SFU needs three answers from it: is this a keyframe start (to resume a stream after
loss or a layer switch), which spatial/temporal layer is it (to drop layers a subscriber
cannot take), and where the frame begins and ends. Nothing here raises on garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "SVC_END",
    "SVC_KEYFRAME",
    "SVC_SS",
    "SVC_START",
    "SVC_SWITCH_TO_SHIFT",
    "SVC_SWITCH_UP",
    "Vp9Descriptor",
    "is_keyframe",
    "layer_info",
    "parse_descriptor",
]

#: :func:`layer_info` flags
SVC_KEYFRAME: Final = 1  # the first packet of a keyframe (P=0, B=1, spatial layer 0)
SVC_START: Final = 2  # B: the first packet of a layer frame
SVC_END: Final = 4  # E: the last packet of a layer frame
SVC_SWITCH_UP: Final = 8  # U: a temporal switching-up point
SVC_SS: Final = 16  # V: a scalability structure follows (parse_descriptor reads it)
#: bits 5-7 of the flags: 1 + the highest temporal layer decoding may start at from this
#: frame (AV1's dependency descriptor says it; 0: none)
SVC_SWITCH_TO_SHIFT: Final = 5


@dataclass(slots=True)
class Vp9Descriptor:
    inter_predicted: bool  # P
    flexible: bool  # F
    start_of_frame: bool  # B
    end_of_frame: bool  # E
    not_upper_reference: bool  # Z: not used as a reference by upper spatial layers
    picture_id: int | None = None
    tid: int | None = None
    switching_up: bool = False  # U
    sid: int | None = None
    inter_layer_dependency: bool = False  # D
    tl0_pic_idx: int | None = None
    p_diffs: list[int] = field(default_factory=list)
    # From the scalability structure (V), when present:
    spatial_layers: int | None = None
    resolutions: list[tuple[int, int]] = field(default_factory=list)
    size: int = 1  # descriptor length: the VP9 frame data starts here

    @property
    def spatial_layer(self) -> int:
        """Spatial layer index; 0 when the descriptor carries no layer indices."""
        return self.sid or 0

    @property
    def temporal_layer(self) -> int:
        """Temporal layer index; 0 when the descriptor carries no layer indices."""
        return self.tid or 0


def parse_descriptor(payload: bytes) -> Vp9Descriptor | None:
    """Parse the descriptor at the start of an RTP payload, or None if truncated/invalid."""
    n = len(payload)
    if n < 1:
        return None
    b = payload[0]
    desc = Vp9Descriptor(
        inter_predicted=bool(b & 0x40),
        flexible=bool(b & 0x10),
        start_of_frame=bool(b & 0x08),
        end_of_frame=bool(b & 0x04),
        not_upper_reference=bool(b & 0x01),
    )
    pos = 1
    if b & 0x80:  # I
        if pos >= n:
            return None
        if payload[pos] & 0x80:  # M
            if pos + 1 >= n:
                return None
            desc.picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
            pos += 2
        else:
            desc.picture_id = payload[pos]
            pos += 1
    if b & 0x20:  # L
        if pos >= n:
            return None
        layer = payload[pos]
        desc.tid = layer >> 5
        desc.switching_up = bool(layer & 0x10)
        desc.sid = (layer >> 1) & 0x07
        desc.inter_layer_dependency = bool(layer & 0x01)
        pos += 1
        if not desc.flexible:
            if pos >= n:
                return None
            desc.tl0_pic_idx = payload[pos]
            pos += 1
    if desc.inter_predicted and desc.flexible:
        while True:  # §4.2: up to 3 reference indices, each announcing the next with N
            if pos >= n or len(desc.p_diffs) == 3:
                return None
            p_diff = payload[pos]
            pos += 1
            desc.p_diffs.append(p_diff >> 1)
            if not p_diff & 0x01:
                break
    if b & 0x02:  # V
        pos = _parse_ss(payload, pos, desc)
        if pos < 0:
            return None
    desc.size = pos
    return desc


def _parse_ss(payload: bytes, pos: int, desc: Vp9Descriptor) -> int:
    """Scalability structure (§4.2.1); returns the offset after it or -1 if truncated."""
    n = len(payload)
    if pos >= n:
        return -1
    head = payload[pos]
    pos += 1
    layers = (head >> 5) + 1  # N_S is the number of spatial layers minus one
    desc.spatial_layers = layers
    if head & 0x10:  # Y: a resolution per spatial layer
        if pos + 4 * layers > n:
            return -1
        for _ in range(layers):
            width = (payload[pos] << 8) | payload[pos + 1]
            height = (payload[pos + 2] << 8) | payload[pos + 3]
            desc.resolutions.append((width, height))
            pos += 4
    if head & 0x08:  # G: picture group description
        if pos >= n:
            return -1
        groups = payload[pos]
        pos += 1
        for _ in range(groups):
            if pos >= n:
                return -1
            refs = (payload[pos] >> 2) & 0x03
            pos += 1 + refs
            if pos > n:
                return -1
    return pos


def is_keyframe(payload: bytes) -> bool:
    """True for the first packet of a key frame: not inter-predicted (P=0), start of a frame
    (B=1) and spatial layer 0, where decoding of a new picture sequence begins."""
    desc = parse_descriptor(payload)
    return (
        desc is not None
        and not desc.inter_predicted
        and desc.start_of_frame
        and desc.spatial_layer == 0
    )


def layer_info(payload: bytes) -> tuple[int, int, int] | None:
    """(spatial id, temporal id, ``SVC_*`` flags) of a packet, read from the first bytes of
    the descriptor only: the per-packet form of :func:`parse_descriptor` for an SFU that drops
    layers (no object, no SS parsing). None if truncated; ids 0 without layer indices (L=0)."""
    n = len(payload)
    if n < 1:
        return None
    b = payload[0]
    flags = (SVC_START if b & 0x08 else 0) | (SVC_END if b & 0x04 else 0)
    if b & 0x02:
        flags |= SVC_SS
    pos = 1
    if b & 0x80:  # I: a 7- or 15-bit picture id
        if pos >= n:
            return None
        pos += 2 if payload[pos] & 0x80 else 1
    sid = tid = 0
    if b & 0x20:  # L
        if pos >= n:
            return None
        layer = payload[pos]
        tid = layer >> 5
        sid = (layer >> 1) & 0x07
        if layer & 0x10:
            flags |= SVC_SWITCH_UP
    if not b & 0x40 and b & 0x08 and sid == 0:
        flags |= SVC_KEYFRAME
    return sid, tid, flags
