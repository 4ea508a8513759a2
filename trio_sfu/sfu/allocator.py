"""Per-subscriber bandwidth allocation across the tracks it receives (pure, no Trio).

Given a subscriber's estimated bandwidth and, per track, the layers the publisher sends with
their measured bitrates, :func:`allocate` picks each track's target layer. The answer feeds
each track's :class:`trio_sfu.proto.layers.LayerSelector` target (via the subscriber's
forwarding group), so it is recomputed when the estimate, a bitrate, a priority or a client
hint changes, not per packet.

Rules, in order (issue 11 §3-4):

1. **Audio first**: every audio track not turned ``off`` is granted before any video, since
   a call survives without video but not without sound.
2. **Ceilings from hints**: ``LAYER … low|mid|high`` caps a video track at that layer (index
   0/1/2, clamped to what exists); ``off`` gives it nothing; ``auto`` caps it at the smallest
   layer at least as wide as the rendered size the client reported with ``SIZE`` (no point
   sending 1280 px into a 320 px tile), or the top layer without a size.
3. **Everyone visible before anyone sharp**: in priority order (screen share / active speaker
   first, then larger tiles), each video track gets its lowest layer while the budget lasts;
   tracks that do not fit are paused (``None``) rather than overrunning the link.
4. **Then upgrade by priority**: in the same order, each track climbs as far as its ceiling
   and the remaining budget allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["HINTS", "Hint", "TrackDemand", "allocate", "wanted_bitrate"]

Hint = Literal["auto", "low", "mid", "high", "off"]
HINTS: tuple[Hint, ...] = ("auto", "low", "mid", "high", "off")
_FIXED: dict[str, int] = {"low": 0, "mid": 1, "high": 2}


@dataclass(frozen=True, slots=True)
class TrackDemand:
    """One track as one subscriber sees it.

    ``bitrates`` are the measured bits/s of the layers the publisher currently sends, lowest
    first (one entry for audio or a single-layer video); ``widths`` their frame widths when
    known (same order). ``priority``: higher is served first (e.g. 2 screen share, 1 active
    speaker, 0 others). ``rendered_width``: the tile width from ``SIZE``, if reported.
    """

    track: str
    kind: Literal["audio", "video"]
    bitrates: tuple[float, ...]
    priority: int = 0
    hint: Hint = "auto"
    rendered_width: int | None = None
    widths: tuple[int, ...] | None = None

    def ceiling(self) -> int | None:
        """The highest layer this subscriber wants, or None for none at all."""
        top = len(self.bitrates) - 1
        if self.hint == "off" or top < 0:
            return None
        if self.hint in _FIXED:
            return min(_FIXED[self.hint], top)
        if self.rendered_width is not None and self.widths is not None:
            for i, width in enumerate(self.widths[: top + 1]):
                if width >= self.rendered_width:
                    return i
        return top


def allocate(bandwidth: float, tracks: Sequence[TrackDemand]) -> dict[str, int | None]:
    """Target layer index per track (None = paused) within ``bandwidth`` bits/s."""
    result: dict[str, int | None] = {t.track: None for t in tracks}
    budget = bandwidth
    for t in tracks:  # 1. audio first
        if t.kind == "audio" and t.ceiling() is not None:
            result[t.track] = 0
            budget -= t.bitrates[0]
    video = sorted(
        (t for t in tracks if t.kind == "video" and t.ceiling() is not None),
        key=lambda t: (-t.priority, -(t.rendered_width or 0)),
    )
    for t in video:  # 3. lowest layers
        if t.bitrates[0] <= budget:
            result[t.track] = 0
            budget -= t.bitrates[0]
    for t in video:  # 4. upgrades by priority
        layer = result[t.track]
        ceiling = t.ceiling()
        if layer is None or ceiling is None:
            continue
        while layer < ceiling and t.bitrates[layer + 1] - t.bitrates[layer] <= budget:
            budget -= t.bitrates[layer + 1] - t.bitrates[layer]
            layer += 1
        result[t.track] = layer
    return result


def wanted_bitrate(tracks: Sequence[TrackDemand]) -> float:
    """Bits/s every track needs at its ceiling: the rate to probe for before switching up.

    When the estimate is below it, the subscriber's estimator sends a probe cluster at this
    rate (:meth:`trio_sfu.proto.bwe.BandwidthEstimator.probe`); a successful probe lifts the
    estimate so the next :func:`allocate` grants the higher layers at once, instead of
    waiting for the estimate's 8 %/s growth.
    """
    total = 0.0
    for t in tracks:
        ceiling = t.ceiling()
        if ceiling is not None:
            total += t.bitrates[ceiling]
    return total
