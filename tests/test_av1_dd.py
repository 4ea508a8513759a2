"""AV1 dependency descriptor reader (trio_sfu.proto.codecs.av1_dd)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.codecs.av1_dd import DTI_SWITCH, DependencyDescriptorReader


class Bits:
    """MSB-first bit writer for building descriptors by the spec's syntax (§A.8)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def f(self, n: int, v: int) -> Bits:
        self.bits += [(v >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def ns(self, n: int, v: int) -> Bits:
        w = n.bit_length()
        m = (1 << w) - n
        if v < m:
            return self.f(w - 1, v)
        x = v + m
        return self.f(w - 1, x >> 1).f(1, x & 1)

    def bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


# L1T3 as libaom/Chromium describe it: templates (S0T0 key, S0T0, S0T1, S0T2, S0T2) and
# 3 decode targets (T0, T0+T1, T0+T1+T2).
L1T3_LAYERS = [0, 1, 1, 0]  # next_layer_idc between the 5 templates, then 3 (end)
L1T3_DTIS = [
    (3, 3, 3),  # key
    (2, 2, 2),  # T0: switch for every target
    (0, 2, 2),  # T1
    (0, 0, 2),  # T2 (switch)
    (0, 0, 1),  # T2 discardable
]


def l1t3_keyframe(template_id: int = 0, frame: int = 1, resolution: bool = True) -> bytes:
    w = Bits().f(1, 1).f(1, 0).f(6, template_id).f(16, frame)
    w.f(1, 1).f(1, 0).f(1, 0).f(1, 0).f(1, 0)  # structure present, nothing custom
    w.f(6, 0).f(5, 2)  # template_id_offset 0, 3 decode targets
    for idc in L1T3_LAYERS:
        w.f(2, idc)
    w.f(2, 3)
    for dtis in L1T3_DTIS:
        for d in dtis:
            w.f(2, d)
    for fdiffs in ([], [4], [2], [1], [1]):
        for fd in fdiffs:
            w.f(1, 1).f(4, fd - 1)
        w.f(1, 0)
    w.ns(4, 1)  # one chain
    for _ in range(3):
        w.ns(1, 0)  # every target protected by chain 0
    for fdiff in (0, 4, 2, 1, 1):
        w.f(4, fdiff)
    w.f(1, 1 if resolution else 0)
    if resolution:
        w.f(16, 1279).f(16, 719)
    return w.bytes()


def mandatory(template_id: int, frame: int, start: bool = True, end: bool = True) -> bytes:
    return Bits().f(1, int(start)).f(1, int(end)).f(6, template_id).f(16, frame).bytes()


def test_structure_and_frames() -> None:
    reader = DependencyDescriptorReader()
    assert reader.parse(mandatory(1, 5)) is None  # no structure yet
    key = reader.parse(l1t3_keyframe())
    assert key is not None and key.structure_attached and key.start_of_frame
    s = reader.structure
    assert s is not None
    assert s.temporal_ids == (0, 0, 1, 2, 2) and s.spatial_ids == (0,) * 5
    assert s.target_layers == ((0, 0), (0, 1), (0, 2))
    assert s.resolutions == ((1280, 720),)
    assert (key.spatial_id, key.temporal_id, key.active_decode_targets) == (0, 0, 0b111)
    t2 = reader.parse(mandatory(3, 6, start=True, end=False))
    assert t2 is not None and (t2.temporal_id, t2.end_of_frame) == (2, False)
    assert t2.dtis[2] == DTI_SWITCH and not t2.structure_attached
    t1 = reader.parse(mandatory(2, 7))
    assert t1 is not None and t1.temporal_id == 1 and t1.frame_number == 7
    assert reader.parse(mandatory(9, 8)) is None  # no such template


def test_template_id_offset_and_active_targets() -> None:
    w = Bits().f(1, 1).f(1, 1).f(6, 40).f(16, 0)
    w.f(1, 1).f(1, 1).f(1, 0).f(1, 0).f(1, 0)
    w.f(6, 40).f(5, 1)  # offset 40, 2 decode targets
    w.f(2, 2).f(2, 3)  # two templates: S0T0, S1T0 (L2T1)
    for dtis in ((3, 3), (0, 3)):
        for d in dtis:
            w.f(2, d)
    w.f(1, 0).f(1, 0)  # no fdiffs
    w.ns(3, 0)  # no chains
    w.f(1, 0)  # no resolutions
    w.f(2, 0b01)  # active decode targets: only the first
    reader = DependencyDescriptorReader()
    dd = reader.parse(w.bytes())
    assert dd is not None and dd.active_decode_targets == 0b01
    upper = reader.parse(mandatory(41, 1))
    assert upper is not None and (upper.spatial_id, upper.temporal_id) == (1, 0)
    assert reader.structure is not None and reader.structure.target_layers == ((0, 0), (1, 0))


@given(st.binary(max_size=40))
def test_garbage_never_raises(data: bytes) -> None:
    reader = DependencyDescriptorReader()
    reader.parse(data)
    reader.parse(l1t3_keyframe())
    reader.parse(data)
    assert reader.structure is not None  # a bad packet does not drop a good structure


@given(st.integers(1, 60))
def test_truncated_keyframe_descriptor_is_rejected(cut: int) -> None:
    data = l1t3_keyframe()
    reader = DependencyDescriptorReader()
    got = reader.parse(data[: max(4, len(data) - cut)])
    assert got is None or got.structure_attached


# Chromium AV1 L3T3 descriptors as captured on the wire (the structure comes with the key
# frame; "40fc" at the end of the next ones sets the active decode targets).
CHROMIUM_L3T3 = [
    "c1017280081485214eafffaaaa863cf0430c10c302afc0aaa0063c00430010c002a000a80006000040001d9549"
    "26e082b04a0941b820ac1282503157f974000ca864330e222222eca8655304224230eca877530077004200ef00"
    "8601df010d",
    "86017340fc",
    "46017340fc",
    "c3017540fc",
    "8b0174",
    "0b0174",
    "c30175",
]


def test_chromium_l3t3_capture() -> None:
    reader = DependencyDescriptorReader()
    got = [reader.parse(bytes.fromhex(h)) for h in CHROMIUM_L3T3]
    assert all(d is not None for d in got)
    s = reader.structure
    assert s is not None and s.decode_targets == 9
    assert s.target_layers == tuple((sid, tid) for sid in range(3) for tid in range(3))
    assert s.resolutions == ((120, 67), (240, 135), (480, 270))
    frames = [
        (d.frame_number, d.spatial_id, d.temporal_id, d.start_of_frame, d.end_of_frame)
        for d in got
        if d is not None
    ]
    assert frames == [
        (370, 0, 0, True, True),
        (371, 1, 0, True, False),
        (371, 1, 0, False, True),
        (373, 0, 2, True, True),
        (372, 2, 0, True, False),
        (372, 2, 0, False, False),
        (373, 0, 2, True, True),
    ]
    assert got[0] is not None and got[0].active_decode_targets == 0b111111111
    assert got[1] is not None and got[1].active_decode_targets == 0b000111111  # S2 paused
