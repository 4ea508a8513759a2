"""The layer selector core (trio_sfu.proto.layers): unit cases and Hypothesis proofs.

The Hypothesis model is a publisher sending three simulcast streams, each in the L1T3
temporal pattern (TID 0,2,1,2 …) with random keyframes, layer-sync frames, 1–3 packets per
frame and random upstream losses, while the target stream/temporal layer changes at random
times. A reference decoder model checks that what the selector forwards is decodable:
every forwarded frame's references were forwarded after the last switch, switches happen
only at keyframes, frames are forwarded whole, and output sequence numbers have no gap that
is not explained by a real loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.proto.layers import NO_LIMIT, LayerSelector

TID_PATTERN = (0, 2, 1, 2)
FRAME_TICKS = 3000  # 30 fps at 90 kHz


@dataclass
class Frame:
    stream: int
    index: int
    tid: int
    keyframe: bool
    sync: bool
    refs: list[tuple[int, int]]  # (stream, index) of referenced frames
    packets: int
    received: list[bool] = field(default_factory=list)


def _refs(history: list[Frame], tid: int, keyframe: bool, sync: bool) -> list[tuple[int, int]]:
    """libvpx-like references inside one stream, back to its last keyframe.

    Non-sync frames of layer t>0 reference the latest lower-layer frame and the latest frame
    of their own layer; TL0 and sync frames reference only the latest TL0 frame.
    """
    if keyframe:
        return []
    since_key: list[Frame] = []
    for f in reversed(history):
        since_key.append(f)
        if f.keyframe:
            break
    refs: list[tuple[int, int]] = []
    lower = next((f for f in since_key if f.tid < tid or (tid == 0 and f.tid == 0)), None)
    if tid == 0 or sync:
        lower = next((f for f in since_key if f.tid == 0), None)
    if lower is not None:
        refs.append((lower.stream, lower.index))
    if tid > 0 and not sync:
        same = next((f for f in since_key if f.tid == tid), None)
        if same is not None:
            refs.append((same.stream, same.index))
    return refs


class Model:
    """Feeds a generated scenario through a selector and checks every invariant."""

    def __init__(self, streams: int) -> None:
        self.sel = LayerSelector(90000, keyframe_interval=0.5, down_timeout=1.0)
        self.streams = streams
        self.seqs = [(1000 * s + 65500) & 0xFFFF for s in range(streams)]  # wrap early
        self.ts_base = [(s * 0x7654321 + 0xFFFF0000) & 0xFFFFFFFF for s in range(streams)]
        self.history: list[list[Frame]] = [[] for _ in range(streams)]
        self.frames: dict[tuple[int, int], Frame] = {}
        # per frame: which of its packets were forwarded
        self.forwarded: dict[tuple[int, int], list[bool]] = {}
        self.out: list[tuple[int, int, Frame, int]] = []  # (seq, ts, frame, packet idx)
        self.segment_start = 0  # index in self.out where the current decoder segment began
        self.loss_since_last_forward = False
        self.requests: list[tuple[float, int, int]] = []  # (now, stream, target epoch)
        self.epoch = 0

    def frame(
        self,
        k: int,
        s: int,
        keyframe: bool,
        sync: bool,
        lost: list[bool],
        changes: dict[int, tuple[int | None, int]] | None = None,
    ) -> None:
        """One frame of stream ``s`` at time k/30; ``changes`` sets targets before packet i."""
        tid = 0 if keyframe else TID_PATTERN[k % 4]
        sync = sync and tid > 0 and not keyframe
        f = Frame(s, k, tid, keyframe, sync, _refs(self.history[s], tid, keyframe, sync), len(lost))
        self.history[s].append(f)
        self.frames[(s, k)] = f
        self.forwarded[(s, k)] = [False] * len(lost)
        now = k / 30
        ts = (self.ts_base[s] + k * FRAME_TICKS) & 0xFFFFFFFF
        for i, is_lost in enumerate(lost):
            if changes and i in changes:
                stream, temporal = changes[i]
                self.epoch += stream != self.sel.target_stream
                self.sel.set_target(stream, temporal=temporal, now=now)
            seq = self.seqs[s]
            self.seqs[s] = (seq + 1) & 0xFFFF
            f.received.append(not is_lost)
            if is_lost:
                if self.sel.current == s:
                    self.loss_since_last_forward = True
                continue
            if self.sel.push(s, 0, tid, seq, ts, keyframe and i == 0, i == 0, sync, now):
                self.check_forward(f, i)
        request = self.sel.keyframe_request(now)
        if request is not None:
            self.requests.append((now, request, self.epoch))

    def check_forward(self, f: Frame, i: int) -> None:
        seq, ts = self.sel.seq, self.sel.ts
        self.forwarded[(f.stream, f.index)][i] = True
        if self.out:
            pseq, pts, pf, _ = self.out[-1]
            gap = (seq - pseq) & 0xFFFF
            assert 1 <= gap < 0x8000, f"sequence went back or repeated: {pseq} -> {seq}"
            if gap > 1:
                assert self.loss_since_last_forward, f"gap {pseq} -> {seq} without a loss"
                assert pf.stream == f.stream, "a stream switch must not leave a gap"
            dts = (ts - pts) & 0xFFFFFFFF
            if pf is f:
                assert dts == 0, "timestamp changed inside a frame"
            else:
                assert 0 < dts < 0x80000000, f"timestamp not increasing across frames: {pts} {ts}"
            # a pause/resume on one stream is caught by the reference checks below
            new_segment = pf.stream != f.stream
        else:
            new_segment = True
        if i == 0:
            assert f.tid <= self.sel.target_temporal, "frame above the temporal target"
        if new_segment:
            assert f.keyframe and i == 0, f"switch at a non-keyframe packet {f}"
            self.segment_start = len(self.out)
        if i == 0 or not any(self.forwarded[(f.stream, f.index)][:i]):
            # first forwarded packet of this frame: its references must be intact
            if not (f.keyframe and i == 0):
                assert i == 0 or not any(f.received[:i]), "frame forwarded from its middle"
                seg = {(o[2].stream, o[2].index) for o in self.out[self.segment_start :]}
                for ref in f.refs:
                    rf = self.frames[ref]
                    dropped = any(
                        r and not fw for r, fw in zip(rf.received, self.forwarded[ref], strict=True)
                    )
                    assert not dropped, f"{f} references {rf}, which was dropped"
                    assert ref in seg or not any(rf.received), f"{f} refs {rf} before switch"
        else:
            assert all(
                fw or not r
                for r, fw in zip(
                    f.received[:i], self.forwarded[(f.stream, f.index)][:i], strict=True
                )
            ), "frame forwarded partially"
        self.out.append((seq, ts, f, i))
        self.loss_since_last_forward = False

    def check_frames_whole(self) -> None:
        for key, fw in self.forwarded.items():
            f = self.frames[key]
            got = [fw[i] for i in range(f.packets) if f.received[i]]
            assert all(got) or not any(got), f"frame {f} partially forwarded: {fw} {f.received}"


scenario = st.fixed_dictionaries(
    {
        "streams": st.integers(1, 3),
        "frames": st.integers(1, 90),
        "loss": st.sampled_from([0.0, 0.0, 0.05, 0.2]),
        "key_p": st.sampled_from([0.02, 0.1, 0.3]),
        "sync_p": st.sampled_from([0.0, 0.3, 0.6, 1.0]),
        "targets": st.lists(
            st.tuples(
                st.integers(0, 89),
                st.integers(0, 2),  # stream of the frame where the change happens
                st.integers(0, 2),  # packet index inside that frame
                st.one_of(st.none(), st.integers(0, 2)),
                st.sampled_from([0, 1, 2, NO_LIMIT]),
            ),
            max_size=8,
        ),
        "initial": st.tuples(st.integers(0, 2), st.sampled_from([0, 1, 2, NO_LIMIT])),
        "seed": st.randoms(use_true_random=False),
    }
)


@settings(max_examples=300, deadline=None)
@given(scenario)
def test_selector_output_is_continuous_and_decodable(sc: dict) -> None:  # type: ignore[type-arg]
    rnd = sc["seed"]
    m = Model(sc["streams"])
    streams = sc["streams"]
    m.sel.set_target(sc["initial"][0] % streams, temporal=sc["initial"][1], now=0.0)
    changes: dict[tuple[int, int], dict[int, tuple[int | None, int]]] = {}
    for when, s, i, stream, temporal in sc["targets"]:
        target = None if stream is None else stream % streams
        changes.setdefault((when, s % streams), {})[i] = (target, temporal)
    for k in range(sc["frames"]):
        for s in range(streams):
            keyframe = k == 0 or rnd.random() < sc["key_p"]
            sync = rnd.random() < sc["sync_p"]
            n = rnd.randint(1, 3)
            lost = [rnd.random() < sc["loss"] for _ in range(n)]
            m.frame(k, s, keyframe, sync, lost, changes.get((k, s)))
    m.check_frames_whole()
    # keyframe requests are throttled while the target stays the same
    for (t1, _, e1), (t2, _, e2) in zip(m.requests, m.requests[1:], strict=False):
        assert e1 != e2 or t2 - t1 >= 0.5 - 1e-9, (t1, t2)
    # and issued for the stream being waited for
    assert all(r[1] is not None for r in m.requests)


def _feed(
    sel: LayerSelector,
    stream: int,
    seq: int,
    tid: int = 0,
    *,
    key: bool = False,
    start: bool = True,
    sync: bool = False,
    now: float = 0.0,
    ts: int = 0,
) -> bool:
    return sel.push(stream, 0, tid, seq, ts, key, start, sync, now)


def test_starts_only_at_a_keyframe_of_the_target() -> None:
    sel = LayerSelector()
    sel.set_target(1, now=0.0)
    assert sel.keyframe_request(0.0) == 1
    assert sel.keyframe_request(0.1) is None  # throttled
    assert not _feed(sel, 1, 10)
    assert not _feed(sel, 0, 50, key=True)  # keyframe of another stream
    assert _feed(sel, 1, 11, key=True, ts=900)
    assert (sel.seq, sel.ts, sel.current) == (11, 900, 1)
    assert sel.keyframe_request(5.0) is None  # nothing to wait for


def test_switch_up_continues_numbering() -> None:
    sel = LayerSelector(90000)
    sel.set_target(0, now=0.0)
    assert _feed(sel, 0, 100, key=True, ts=1000)
    assert _feed(sel, 0, 101, ts=4000, now=1 / 30)
    sel.set_target(2, now=0.05)
    assert sel.keyframe_request(0.05) == 2
    assert _feed(sel, 0, 102, ts=7000, now=2 / 30)  # still low until the high keyframe
    assert not _feed(sel, 2, 9000, ts=555, now=2 / 30)
    assert _feed(sel, 2, 9001, key=True, ts=3555, now=3 / 30)
    assert sel.seq == 103
    assert sel.ts == 7000 + 3000
    assert _feed(sel, 2, 9002, start=False, ts=3555, now=3 / 30)
    assert (sel.seq, sel.ts) == (104, 10000)
    assert not _feed(sel, 0, 103, key=True, ts=10000, now=3 / 30)  # old stream dropped


def test_switch_down_pauses_after_the_timeout() -> None:
    sel = LayerSelector(down_timeout=1.0)
    sel.set_target(2, now=0.0)
    assert _feed(sel, 2, 1, key=True)
    sel.set_target(0, now=0.0)
    assert _feed(sel, 2, 2, now=0.5)  # keep the high stream until the low keyframe…
    assert not _feed(sel, 2, 3, now=1.0)  # …for at most down_timeout
    assert sel.current is None
    assert not _feed(sel, 2, 4, now=1.1)
    assert sel.keyframe_request(1.1) == 0
    assert _feed(sel, 0, 70, key=True, now=1.2)
    assert sel.seq == 3  # continues after the last forwarded packet (2)


def test_off_pauses_at_the_next_frame_and_resumes_on_a_keyframe() -> None:
    sel = LayerSelector()
    sel.set_target(0, now=0.0)
    assert _feed(sel, 0, 1, key=True)
    sel.set_target(None, now=0.1)
    assert _feed(sel, 0, 2, start=False, now=0.1)  # finish the frame
    assert not _feed(sel, 0, 3, now=0.2)
    assert sel.keyframe_request(0.2) is None
    sel.set_target(0, now=0.3)
    assert not _feed(sel, 0, 4, now=0.3)
    assert _feed(sel, 0, 5, key=True, now=0.4)
    assert sel.seq == 3


def test_temporal_drop_closes_sequence_and_up_switch_needs_sync() -> None:
    sel = LayerSelector()
    sel.set_target(0, temporal=0, now=0.0)
    assert _feed(sel, 0, 1, 0, key=True)
    assert not _feed(sel, 0, 2, 2)
    assert not _feed(sel, 0, 3, 1)
    assert not _feed(sel, 0, 4, 1, start=False)
    assert _feed(sel, 0, 5, 0)
    assert sel.seq == 2
    sel.set_target(0, temporal=2, now=0.1)
    assert not _feed(sel, 0, 6, 2, sync=True)  # TL2 sync while at TL0: one layer at a time
    assert not _feed(sel, 0, 7, 1)  # TL1 without sync
    assert _feed(sel, 0, 8, 1, sync=True)
    assert sel.seq == 3
    assert _feed(sel, 0, 9, 2, sync=True)
    assert sel.temporal == 2


def test_spatial_limit_drops_upper_layers_until_keyframe() -> None:
    sel = LayerSelector()
    sel.set_target(0, spatial=0, now=0.0)
    assert sel.push(0, 0, 0, 1, 0, True, True, False, 0.0)
    assert not sel.push(0, 1, 0, 2, 0, False, True, False, 0.0)
    sel.set_target(0, spatial=2, now=0.0)
    assert sel.keyframe_request(0.0) == 0  # a higher spatial layer needs a keyframe
    assert sel.push(0, 0, 0, 3, 3000, False, True, False, 0.1)
    assert not sel.push(0, 1, 0, 4, 3000, False, True, False, 0.1)
    assert sel.push(0, 0, 0, 5, 6000, True, True, False, 0.2)
    assert sel.push(0, 1, 0, 6, 6000, False, True, False, 0.2)
    assert sel.seq == 4
    sel.set_target(0, spatial=0, now=0.3)
    assert sel.push(0, 0, 0, 7, 9000, False, True, False, 0.3)
    assert not sel.push(0, 1, 0, 8, 9000, False, True, False, 0.3)


def test_duplicates_dropped_late_packets_forwarded_only_while_numbering_is_sure() -> None:
    sel = LayerSelector()
    sel.set_target(0, now=0.0)
    assert _feed(sel, 0, 65535, key=True)
    assert _feed(sel, 0, 1, start=False)  # wraps; 0 lost
    assert sel.seq == 1 and not sel.late
    assert not _feed(sel, 0, 1, start=False)  # duplicate of the newest
    # 0 comes late (a reorder or the publisher's retransmission): nothing was dropped since
    # the switch, so its number is sure; seq/ts stay the newest's.
    assert _feed(sel, 0, 0, start=False)
    assert sel.late and sel.seq == 1
    assert not _feed(sel, 0, 65534, start=False)  # from before the switch to this stream
    # Once a layer was dropped, late packets are dropped too (their number is ambiguous).
    sel.set_target(0, temporal=0, now=0.1)
    assert _feed(sel, 0, 2, tid=0)
    assert not _feed(sel, 0, 3, tid=1, start=True)
    assert _feed(sel, 0, 5, tid=0)
    assert not _feed(sel, 0, 4, start=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 59), st.sampled_from([0, 1, 2, NO_LIMIT])), max_size=6),
    st.sampled_from([0.0, 0.3, 0.6]),
    st.sampled_from([0.0, 0.05]),
    st.randoms(use_true_random=False),
)
def test_temporal_switching_is_decodable(
    changes: list[tuple[int, int]], sync_p: float, loss: float, rnd: random.Random
) -> None:
    """One stream, 60 frames, rare keyframes: temporal up/down switches stay decodable."""
    m = Model(1)
    m.sel.set_target(0, temporal=0, now=0.0)
    at = dict(changes)
    for k in range(60):
        change = {0: (0, at[k])} if k in at else None
        lost = [k > 0 and rnd.random() < loss for _ in range(rnd.randint(1, 2))]
        m.frame(k, 0, k == 0 or rnd.random() < 0.02, rnd.random() < sync_p, lost, change)
    m.check_frames_whole()
    assert m.out, "the first keyframe is always forwarded"


def test_clone_continues_then_diverges() -> None:
    sel = LayerSelector()
    sel.set_target(0, temporal=2, now=0.0)
    assert _feed(sel, 0, 10, 0, key=True, ts=100)
    twin = sel.clone()
    assert _feed(sel, 0, 11, 2, ts=3100, now=0.03) and _feed(twin, 0, 11, 2, ts=3100, now=0.03)
    assert (sel.seq, sel.ts) == (twin.seq, twin.ts) == (11, 3100)
    twin.set_target(0, temporal=0, now=0.05)  # the split-off subscriber wants less
    assert _feed(sel, 0, 12, 2, ts=6100, now=0.06)
    assert not _feed(twin, 0, 12, 2, ts=6100, now=0.06)
    assert _feed(sel, 0, 13, 0, ts=9100, now=0.1) and _feed(twin, 0, 13, 0, ts=9100, now=0.1)
    assert (sel.seq, twin.seq) == (13, 12)
    assert sel.target_temporal == 2


def test_a_switch_indication_on_a_lower_layers_frame_raises_the_temporal_limit() -> None:
    """AV1's dependency descriptor may mark a T0 frame as where decoding of T1/T2 can start
    (``switch_up_to``): the limit rises there, up to the target, not above it."""
    sel = LayerSelector()
    sel.set_target(0, temporal=0, now=0.0)
    assert _feed(sel, 0, 1, 0, key=True)
    assert not _feed(sel, 0, 2, 2)
    sel.set_target(0, temporal=1, now=0.1)
    assert not _feed(sel, 0, 3, 1)  # no switch point yet
    assert sel.push(0, 0, 0, 4, 4 * 3000, False, True, False, 0.2, switch_up_to=2)
    assert sel.temporal == 1  # up to the target only
    assert _feed(sel, 0, 5, 1)
    assert not _feed(sel, 0, 6, 2)
    assert sel.seq == 3
