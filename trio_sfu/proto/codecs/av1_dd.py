"""AV1 Dependency Descriptor RTP header extension (AV1 RTP spec, Appendix A).

``https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension``
tells an SFU, without touching the payload, where a frame starts and ends and which
spatial/temporal layer it belongs to. Each packet carries a template id; the templates
(``template_dependency_structure``, §A.8.3) come with keyframes, so a reader keeps the last
structure and resolves later packets against it: one :class:`DependencyDescriptorReader`
per incoming stream.

Only what layer selection needs is kept: per template its spatial/temporal id and decode
target indications (DTIs; 3 = "switch", where a receiver may start decoding that target),
the decode targets' layers, and the render resolutions when given. Garbage gives ``None``
and never raises: this runs on every packet of every AV1 publisher.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DTI_SWITCH",
    "DependencyDescriptor",
    "DependencyDescriptorReader",
    "TemplateStructure",
]

DTI_NOT_PRESENT, DTI_DISCARDABLE, DTI_SWITCH, DTI_REQUIRED = 0, 1, 2, 3
"""Decode target indications (§A.8.3.3): 2 is "switch", a point to start decoding a target."""


class _Bits:
    """MSB-first bit reader (§A.8.1 ``f(n)`` and ``ns(n)``)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def f(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise IndexError("dependency descriptor truncated")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ns(self, n: int) -> int:
        """Non-symmetric unsigned value in [0, n) (§A.8.1)."""
        w = n.bit_length()
        m = (1 << w) - n
        v = self.f(w - 1)
        if v < m:
            return v
        return (v << 1) - m + self.f(1)


@dataclass(frozen=True, slots=True)
class TemplateStructure:
    """A ``template_dependency_structure`` (§A.8.3.3)."""

    template_id_offset: int
    decode_targets: int
    spatial_ids: tuple[int, ...]  # per template
    temporal_ids: tuple[int, ...]  # per template
    dtis: tuple[tuple[int, ...], ...]  # per template, per decode target
    target_layers: tuple[tuple[int, int], ...]  # per decode target: (spatial, temporal)
    resolutions: tuple[tuple[int, int], ...]  # per spatial layer (width, height), if given

    @property
    def max_spatial_id(self) -> int:
        return max(self.spatial_ids)

    @property
    def max_temporal_id(self) -> int:
        return max(self.temporal_ids)


@dataclass(frozen=True, slots=True)
class DependencyDescriptor:
    """What one packet's descriptor says about its frame."""

    start_of_frame: bool
    end_of_frame: bool
    frame_number: int
    template_id: int
    spatial_id: int
    temporal_id: int
    dtis: tuple[int, ...]  # per decode target (the template's or the custom ones)
    structure_attached: bool  # a new structure came with this packet (a keyframe's)
    active_decode_targets: int  # bitmask


def _parse_structure(r: _Bits) -> TemplateStructure:
    offset = r.f(6)
    dt_cnt = r.f(5) + 1
    spatial: list[int] = []
    temporal: list[int] = []
    s = t = 0
    while True:  # template_layers (§A.8.3.3)
        spatial.append(s)
        temporal.append(t)
        if len(spatial) > 64:
            raise ValueError("more than 64 templates")
        idc = r.f(2)
        if idc == 1:
            t += 1
        elif idc == 2:
            t = 0
            s += 1
        elif idc == 3:
            break
    count = len(spatial)
    dtis = tuple(tuple(r.f(2) for _ in range(dt_cnt)) for _ in range(count))
    for _ in range(count):  # template_fdiffs: skipped, the SFU does not need them
        while r.f(1):
            r.f(4)
    chain_cnt = r.ns(dt_cnt + 1)
    if chain_cnt:
        for _ in range(dt_cnt):
            r.ns(chain_cnt)
        r.f(4 * chain_cnt * count)
    layers = []
    for dt in range(dt_cnt):  # decode_target_layers: derived, no bits
        used = [i for i in range(count) if dtis[i][dt] != DTI_NOT_PRESENT]
        layers.append(
            (
                max((spatial[i] for i in used), default=0),
                max((temporal[i] for i in used), default=0),
            )
        )
    resolutions: list[tuple[int, int]] = []
    if r.f(1):
        for _ in range(max(spatial) + 1):
            resolutions.append((r.f(16) + 1, r.f(16) + 1))
    return TemplateStructure(
        offset, dt_cnt, tuple(spatial), tuple(temporal), dtis, tuple(layers), tuple(resolutions)
    )


class DependencyDescriptorReader:
    """Parses descriptors of one stream, remembering the last template structure."""

    __slots__ = ("active_decode_targets", "structure")

    def __init__(self) -> None:
        self.structure: TemplateStructure | None = None
        self.active_decode_targets = 0

    def parse(self, value: bytes | None) -> DependencyDescriptor | None:
        """The packet's frame information, or None (absent, malformed, or no structure yet)."""
        if value is None or len(value) < 3:
            return None
        r = _Bits(value)
        try:
            start, end, template_id, frame_number = r.f(1), r.f(1), r.f(6), r.f(16)
            structure = self.structure
            attached = False
            custom_dtis = False
            active = self.active_decode_targets
            if len(value) > 3:  # extended_descriptor_fields (§A.8.2)
                has_structure, has_active, custom_dtis_flag = r.f(1), r.f(1), r.f(1)
                r.f(2)  # custom_fdiffs_flag, custom_chains_flag
                custom_dtis = bool(custom_dtis_flag)
                if has_structure:
                    structure = _parse_structure(r)
                    attached = True
                    active = (1 << structure.decode_targets) - 1
                if has_active:
                    if structure is None:
                        return None
                    active = r.f(structure.decode_targets)
            if structure is None:
                return None
            index = (template_id + 64 - structure.template_id_offset) % 64
            if index >= len(structure.spatial_ids):
                return None
            if custom_dtis:
                dtis = tuple(r.f(2) for _ in range(structure.decode_targets))
            else:
                dtis = structure.dtis[index]
        except (IndexError, ValueError):
            return None
        if attached:
            self.structure = structure
        self.active_decode_targets = active
        return DependencyDescriptor(
            bool(start),
            bool(end),
            frame_number,
            template_id,
            structure.spatial_ids[index],
            structure.temporal_ids[index],
            dtis,
            attached,
            active,
        )
