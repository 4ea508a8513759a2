"""Active speaker detection (trio_sfu.sfu.speaker) on synthetic RFC 6464 level sequences."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.proto.rtp import RtpPacket, audio_level, find_extension, loudness
from trio_sfu.sfu.speaker import SpeakerDetector

PACKET = 0.02  # 20 ms Opus frames
TICK = 0.1


def run(
    det: SpeakerDetector,
    seconds: float,
    level_of: dict[str, object],
    start: float = 0.0,
) -> list[tuple[float, str]]:
    """Feed 50 packets/s per speaker (level_of maps name -> f(t) -> RFC 6464 level or None)."""
    changes: list[tuple[float, str]] = []
    steps = round(seconds / PACKET)
    for i in range(1, steps + 1):
        t = start + i * PACKET
        for name, fn in level_of.items():
            lvl = fn(t)  # type: ignore[operator]
            if lvl is not None:
                det.level(name, loudness(bytes([0x80 | lvl])))
        if i % round(TICK / PACKET) == 0:
            new = det.tick(t)
            if new is not None:
                changes.append((t, new))
    return changes


def speech(base: int, rnd: random.Random) -> object:
    """A talker around ``base`` -dBov with syllable-scale dips (bursty, like real speech)."""
    return lambda t: min(127, base + (rnd.choice((0, 0, 3, 8, 25)) if (t * 5) % 1 > 0.7 else 0))


def test_audio_level_parsing() -> None:
    pkt = RtpPacket(payload_type=111, sequence_number=1, timestamp=2, ssrc=3, payload=b"x")
    pkt.extensions[1] = bytes([0x80 | 33])
    data = pkt.serialize()
    assert audio_level(find_extension(data, 1)) == 33
    assert loudness(find_extension(data, 1)) == 94
    assert audio_level(find_extension(data, 2)) == 127  # absent: silence
    assert audio_level(b"") == 127
    assert audio_level(b"\x05\x00") == 5  # padded two-byte-header element


def test_loud_speaker_wins_within_two_seconds() -> None:
    rnd = random.Random(1)
    det = SpeakerDetector()
    for name in ("a", "b"):
        det.add(name)
    quiet, loud = speech(45, rnd), speech(25, rnd)
    changes = run(det, 3.0, {"a": quiet, "b": lambda t: 127})
    assert changes and changes[-1][1] == "a"
    assert det.dominant == "a"
    # b starts talking 20 dB louder at t=3 s
    changes = run(det, 3.0, {"a": quiet, "b": loud}, start=3.0)
    assert [c[1] for c in changes] == ["b"]
    assert changes[0][0] - 3.0 <= 2.0, changes


def test_brief_noise_does_not_switch() -> None:
    rnd = random.Random(2)
    det = SpeakerDetector()
    for name in ("a", "b"):
        det.add(name)
    talker = speech(35, rnd)
    run(det, 3.0, {"a": talker, "b": lambda t: 127})
    assert det.dominant == "a"

    # b: a 0.2 s loud burst (a cough, a door) every 1.5 s at 0 dBov, otherwise silent
    def bursts(t: float) -> int:
        return 0 if (t % 1.5) < 0.2 else 127

    changes = run(det, 10.0, {"a": talker, "b": bursts}, start=3.0)
    assert changes == []
    assert det.dominant == "a"


def test_silence_below_floor_never_becomes_dominant() -> None:
    det = SpeakerDetector(floor_dbov=-60)
    det.add("a")
    assert run(det, 3.0, {"a": lambda t: 75}) == []  # background noise at -75 dBov
    assert det.dominant is None


def test_removed_dominant_is_replaced() -> None:
    det = SpeakerDetector()
    for name in ("a", "b"):
        det.add(name)
    run(det, 2.0, {"a": lambda t: 20, "b": lambda t: 40})
    assert det.dominant == "a"
    det.remove("a")
    changes = run(det, 1.0, {"b": lambda t: 40}, start=2.0)
    assert [c[1] for c in changes] == ["b"]
    assert [n for n, _ in det.levels()] == ["b"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 127), min_size=1, max_size=6), min_size=2, max_size=4),
    st.integers(1, 200),
)
def test_changes_are_rate_limited(levels: list[list[int]], seed: int) -> None:
    """Whatever the levels, at most one change per min_interval (1 s)."""
    rnd = random.Random(seed)
    det = SpeakerDetector()
    fns: dict[str, object] = {}
    for i, choices in enumerate(levels):
        det.add(str(i))
        fns[str(i)] = lambda t, c=choices: rnd.choice(c)
    changes = run(det, 12.0, fns)
    for (t1, _), (t2, _) in itertools.pairwise(changes):
        assert t2 - t1 >= 1.0 - 1e-9
