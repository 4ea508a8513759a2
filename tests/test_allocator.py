"""The bandwidth allocator core (trio_sfu.sfu.allocator)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.bwe import BandwidthEstimator
from trio_sfu.sfu.allocator import HINTS, TrackDemand, allocate, wanted_bitrate

SIM = (150_000.0, 500_000.0, 1_500_000.0)
WIDTHS = (320, 640, 1280)
AUDIO = TrackDemand("a", "audio", (40_000.0,))


def video(name: str, priority: int = 0, **kw: object) -> TrackDemand:
    return TrackDemand(name, "video", SIM, priority, widths=WIDTHS, **kw)  # type: ignore[arg-type]


def test_plenty_of_bandwidth_gives_top_layers() -> None:
    assert allocate(10e6, [AUDIO, video("v1"), video("v2")]) == {"a": 0, "v1": 2, "v2": 2}


def test_audio_first_then_everyone_low_then_priority_climbs() -> None:
    got = allocate(40_000 + 150_000 * 2 + 350_000, [video("v1"), AUDIO, video("v2", priority=1)])
    assert got == {"a": 0, "v1": 0, "v2": 1}


def test_capped_link_settles_on_the_low_layer() -> None:
    assert allocate(400_000, [AUDIO, video("v")]) == {"a": 0, "v": 0}


def test_too_little_pauses_lower_priority_video_but_keeps_audio() -> None:
    got = allocate(200_000, [AUDIO, video("v1"), video("screen", priority=2)])
    assert got == {"a": 0, "v1": None, "screen": 0}
    assert allocate(10_000, [AUDIO, video("v")]) == {"a": 0, "v": None}


def test_hints_and_rendered_size() -> None:
    tracks = [
        video("off", hint="off"),
        video("low", hint="low"),
        video("mid", hint="mid"),
        video("tile", rendered_width=400),
        video("tiny", rendered_width=100),
        TrackDemand("single", "video", (300_000.0,), hint="high"),
    ]
    assert allocate(100e6, tracks) == {
        "off": None,
        "low": 0,
        "mid": 1,
        "tile": 1,
        "tiny": 0,
        "single": 0,
    }
    assert allocate(1e6, [TrackDemand("a", "audio", (1.0,), hint="off")]) == {"a": None}


@given(
    st.floats(0, 20e6),
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(HINTS),
            st.lists(st.floats(1e3, 3e6), min_size=1, max_size=3).map(sorted),
        ),
        max_size=6,
    ),
)
def test_allocation_fits_the_budget_and_the_ceilings(
    bandwidth: float, specs: list[tuple[int, str, list[float]]]
) -> None:
    tracks = [
        TrackDemand(f"v{i}", "video", tuple(rates), prio, hint)  # type: ignore[arg-type]
        for i, (prio, hint, rates) in enumerate(specs)
    ]
    got = allocate(bandwidth, tracks)
    used = sum(t.bitrates[got[t.track]] for t in tracks if got[t.track] is not None)  # type: ignore[index]
    assert used <= bandwidth + 1e-6
    for t in tracks:
        layer, ceiling = got[t.track], t.ceiling()
        assert layer is None or (ceiling is not None and layer <= ceiling)
        if layer is None and ceiling is not None:
            # paused only when even its lowest layer did not fit the remaining budget
            assert t.bitrates[0] > bandwidth - used - 1e-6


def test_wanted_bitrate_sums_each_tracks_ceiling_and_drives_a_probe() -> None:
    tracks = [AUDIO, video("v1"), video("v2", hint="low"), video("v3", hint="off"),
              video("v4", rendered_width=600)]
    assert wanted_bitrate(tracks) == 40_000 + 1_500_000 + 150_000 + 500_000
    bwe = BandwidthEstimator(400_000)
    cluster = bwe.probe(wanted_bitrate(tracks), 0.0)
    assert cluster is not None and cluster.bitrate == wanted_bitrate(tracks)
    # below the estimate nothing needs probing
    assert BandwidthEstimator(5_000_000).probe(wanted_bitrate(tracks), 0.0) is None
