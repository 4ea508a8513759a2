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

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "FIXED_LAYERS",
    "HINTS",
    "MAX_PROBE_WAIT",
    "PEAK_WINDOW",
    "UNMEASURED_LAYER_BITRATES",
    "UP_MARGIN",
    "Hint",
    "LayerPlanner",
    "TrackDemand",
    "allocate",
    "wanted_bitrate",
]

Hint = Literal["auto", "low", "mid", "high", "off"]
HINTS: tuple[Hint, ...] = ("auto", "low", "mid", "high", "off")
#: the fixed ``LAYER`` hints as simulcast stream indexes (lowest first)
FIXED_LAYERS: dict[str, int] = {"low": 0, "mid": 1, "high": 2}
#: bits/s assumed for a simulcast stream not measured yet (libwebrtc's defaults for 3 layers
#: at 720p are about 150k / 500k / 1.5–2.5M)
UNMEASURED_LAYER_BITRATES = (150_000.0, 500_000.0, 1_500_000.0)
#: The share of the estimate a layer switch *up* may plan to use (see LayerPlanner)
UP_MARGIN = 0.8
#: Failed probes are repeated after 1, 2, 4, 4… s: a 100 ms padding burst costs a capped link
#: a few kB of queue, and a lifted cap is found within seconds
MAX_PROBE_WAIT = 4.0
#: Seconds over which a simulcast layer counts at its highest measured bitrate when the
#: planner decides what fits: one low 1 s sample (a stream resuming, or its encoder
#: stalling: 17 kbit/s between readings of ~380k) let a capped subscriber's mid layer "fit"
#: and switched her up to a layer her link could not carry.
PEAK_WINDOW = 5.0


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
        if self.hint in FIXED_LAYERS:
            return min(FIXED_LAYERS[self.hint], top)
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


#: Loss windows the estimator must judge over a layer trial before it counts as held
TRIAL_WINDOWS = 3


class LayerPlanner:
    """One subscriber's simulcast layers over time, from its bandwidth estimate (pure).

    :func:`allocate` answers "what fits in this many bits/s"; this decides *when* to act on
    it, because a GCC-like estimate (:mod:`trio_sfu.proto.bwe`) is only a lower bound until
    the link has pushed back: it grows at most to 1.5 × what was delivered, so a subscriber
    on a low layer never sees an estimate that would admit the next one. Hence:

    - **down at once on congestion**: when the estimator lowered its estimate since the last
      plan (overuse or loss: ``decreases`` moved), every simulcast track above what
      :func:`allocate` grants at that estimate goes down to it;
    - **up by probe** (``probing``: the subscriber can receive padding with transport-cc):
      after ``hold`` seconds without congestion, the highest-priority track below its
      ceiling goes up one layer if :func:`allocate` grants it within :data:`UP_MARGIN` of
      the estimate; otherwise
      :attr:`probe_target` asks the caller to probe for the rate that layer needs (a short
      padding burst, :meth:`BandwidthEstimator.probe`; a probe that gets through lifts the
      estimate, one that hits a bottleneck measures it). A few kB a second cost nothing
      on a capped link, where switching up to find out would freeze the video;
    - **up by trial** (no probing possible): the track tries the next layer itself; a trial
      held for ``hold`` seconds without congestion succeeded and the next layer may be
      tried; congestion within ``hold`` means it failed: back to the layer it started from
      (which held; such a receiver's estimate only falls, so what it grants says little),
      and that track waits ``backoff`` seconds before the next trial, twice as long after
      each further failure (up to ``max_backoff``), until a trial of that layer (or a higher
      one) holds: a lower layer holding again after a congestion drop says nothing new about
      the layer that failed, so its trials stay as far apart;
    - **hints**: ``LAYER low|mid|high`` set the layer at once (congestion may still lower
      it); ``auto`` climbs to its ceiling (the top, or the smallest layer as wide as the
      ``SIZE`` the client rendered) by trials. ``off`` tracks are not planned here (paused).

    Each simulcast layer counts at its peak bitrate over the last :data:`PEAK_WINDOW`
    seconds: a single low 1 s sample (a stream that paused and resumed within it, or an
    encoder's dip) must not make a layer look as if it fitted.

    The lowest layer is never given up for lack of budget: a subscriber sees every track.
    """

    __slots__ = (
        "_backoff",
        "_base_backoff",
        "_congested_at",
        "_decreases",
        "_failed",
        "_hold",
        "_max_backoff",
        "_next_trial",
        "_peaks",
        "_probe_wait",
        "_probed_at",
        "_tried_at",
        "_tried_from",
        "_tried_windows",
        "probe_target",
    )

    def __init__(
        self, *, hold: float = 3.0, backoff: float = 4.0, max_backoff: float = 16.0
    ) -> None:
        self._hold = hold
        self._base_backoff = backoff
        self._max_backoff = max_backoff
        self._decreases = 0
        self._congested_at = float("-inf")
        self._backoff: dict[str, float] = {}
        self._next_trial: dict[str, float] = {}
        #: per track, the layer whose last trial failed (until a trial that high holds)
        self._failed: dict[str, int] = {}
        self._tried_at: dict[str, float] = {}
        #: the layer each trial started from: the one that held, where a failed trial ends
        self._tried_from: dict[str, int] = {}
        #: the estimator's loss windows when each trial started (see :meth:`_held`)
        self._tried_windows: dict[str, int] = {}
        #: bits/s the last :meth:`plan` wants probed (None: no probe)
        self.probe_target: float | None = None
        # A probe that did not lift the estimate is repeated after a second, then twice as
        # long (to MAX_PROBE_WAIT): on a capped link each costs a little queueing.
        self._probed_at = float("-inf")
        self._probe_wait = 0.0
        # Per simulcast track, its layers' bitrates as planned over the last PEAK_WINDOW
        self._peaks: dict[str, deque[tuple[float, tuple[float, ...]]]] = {}

    def plan(
        self,
        estimate: float,
        decreases: int,
        demands: Sequence[TrackDemand],
        current: dict[str, int],
        now: float,
        *,
        probing: bool = False,
        windows: int | None = None,
    ) -> dict[str, int]:
        """The layer each simulcast track in ``current`` (its layer now) should get.

        ``demands`` covers every track the subscriber receives (audio and single-layer video
        take their share of ``estimate`` first); ``decreases`` is the estimator's counter,
        ``windows`` its count of loss windows judged (None: trials are judged by time).
        Each simulcast layer counts at its peak over the last :data:`PEAK_WINDOW` seconds
        of ``demands`` (:meth:`_at_peak`).
        """
        demands = self._at_peak(demands, now)
        out = dict(current)
        self.probe_target = None
        by_track = {d.track: d for d in demands}
        congested = decreases != self._decreases
        self._decreases = decreases
        for kept in (
            self._tried_at,
            self._tried_from,
            self._tried_windows,
            self._backoff,
            self._next_trial,
            self._failed,
        ):
            for key in [k for k in kept if k not in current]:  # tracks gone
                del kept[key]
        fits: dict[str, int | None] = {}
        if congested:
            self._congested_at = now
            fits = allocate(estimate, demands)
        for track, layer in current.items():
            demand = by_track.get(track)
            if demand is None:
                continue
            ceiling = demand.ceiling()
            top = 0 if ceiling is None else ceiling
            if demand.hint in FIXED_LAYERS:
                want = top
                if congested:
                    want = min(want, fits.get(track) or 0)
                out[track] = want
                continue
            if layer > top:
                out[track] = top  # the ceiling came down (a smaller tile)
            elif congested and (fits.get(track) or 0) < layer:
                out[track] = fits.get(track) or 0
                if track in self._tried_at and not self._held(track, now, windows):
                    # The trial failed: back to the layer that held before it (the estimate
                    # of a receiver that cannot be probed says little: it only falls), and
                    # wait, twice as long after the next failure. Congestion outside a
                    # trial is the link's own: down to what the estimate grants.
                    tried_from = self._tried_from.pop(track, 0)
                    out[track] = max(out[track], tried_from)
                    self._failed[track] = tried_from + 1
                    backoff = self._backoff.get(track, self._base_backoff)
                    self._next_trial[track] = now + backoff
                    self._backoff[track] = min(2 * backoff, self._max_backoff)
                    self._tried_at.pop(track)
        if congested or now - self._congested_at < self._hold:
            return out
        ordered = sorted(demands, key=lambda d: (-d.priority, -(d.rendered_width or 0)))
        if probing:
            return self._climb_by_probe(estimate, ordered, out, now)
        for demand, at in _climbable(ordered, out):
            track = demand.track
            tried = track in self._tried_at
            if tried and not self._held(track, now, windows):
                return out  # one trial at a time: the last one is still being judged
            if now < self._next_trial.get(track, float("-inf")):
                continue
            if tried and self._tried_from[track] + 1 >= self._failed.get(track, 0):
                # the last trial held, as high as any that failed: start afresh
                self._backoff[track] = self._base_backoff
                self._failed.pop(track, None)
            out[track] = at + 1
            self._tried_at[track] = now
            self._tried_from[track] = at
            if windows is not None:
                self._tried_windows[track] = windows
            return out
        return out

    def _held(self, track: str, now: float, windows: int | None) -> bool:
        """Whether ``track``'s last trial held: ``hold`` seconds without congestion, over
        which the estimator judged at least :data:`TRIAL_WINDOWS` loss windows. A receiver
        that reports only in RTCP receiver reports (every 0.5-1.5 s) tells of a trial's loss
        seconds after it began — after the new layer's keyframe got through, and a report
        interval — so time alone would call a trial held before anything was heard of it."""
        if now - self._tried_at[track] < self._hold:
            return False
        start = self._tried_windows.get(track)
        return windows is None or start is None or windows - start >= TRIAL_WINDOWS

    def _at_peak(self, demands: Sequence[TrackDemand], now: float) -> list[TrackDemand]:
        """``demands`` with each layered track's bitrates at their peak over the last
        :data:`PEAK_WINDOW` seconds: a layer's 1 s samples move with its encoder and with
        pauses, and switching up on a low one costs a freeze, where waiting for the layer
        to stay low for a few seconds costs nothing."""
        peaks = self._peaks
        out: list[TrackDemand] = []
        layered: set[str] = set()
        for demand in demands:
            rates = demand.bitrates
            if len(rates) < 2:
                out.append(demand)
                continue
            layered.add(demand.track)
            ring = peaks.get(demand.track)
            if ring is None or len(ring[0][1]) != len(rates):
                ring = peaks[demand.track] = deque()  # new, or its layers changed
            ring.append((now, rates))
            while ring[0][0] < now - PEAK_WINDOW:
                ring.popleft()
            if len(ring) > 1:
                peak = tuple(max(r[i] for _, r in ring) for i in range(len(rates)))
                if peak != rates:
                    demand = replace(demand, bitrates=peak)
            out.append(demand)
        for key in peaks.keys() - layered:  # tracks gone, or no longer layered
            del peaks[key]
        return out

    def _climb_by_probe(
        self, estimate: float, ordered: list[TrackDemand], out: dict[str, int], now: float
    ) -> dict[str, int]:
        # Up only with headroom: layer bitrates move with the publisher's encoder and the
        # estimate with the link, and a switch that overshoots costs a keyframe, a queue
        # and a switch back.
        fits = allocate(estimate * UP_MARGIN, ordered)
        for demand, at in _climbable(ordered, out):
            track = demand.track
            if (fits.get(track) or 0) > at:
                out[track] = at + 1  # the estimate (a probe's, or grown) admits it
                self._probe_wait = 0.0
                return out
            if now - self._probed_at < self._probe_wait:
                return out
            # the last probe (if any) did not lift the estimate far enough: wait longer
            self._probe_wait = min(max(2 * self._probe_wait, 1.0), MAX_PROBE_WAIT)
            self._probed_at = now
            # What every track takes now, plus this one's next layer, with some headroom.
            total = sum(d.bitrates[min(out.get(d.track, 0), len(d.bitrates) - 1)] for d in ordered)
            need = total + demand.bitrates[at + 1] - demand.bitrates[at]
            self.probe_target = 1.05 * need / UP_MARGIN
            return out
        return out


def _climbable(
    ordered: list[TrackDemand], out: dict[str, int]
) -> Iterator[tuple[TrackDemand, int]]:
    """The simulcast tracks that may climb (``auto``, below their ceiling), in priority
    order, each with its layer now."""
    for demand in ordered:
        at = out.get(demand.track)
        ceiling = demand.ceiling()
        if at is not None and ceiling is not None and at < ceiling and demand.hint == "auto":
            yield demand, at
