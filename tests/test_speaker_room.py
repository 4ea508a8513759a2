"""The room's active speaker across pods (trio_sfu.sfu.speaker.RoomSpeakers), in simulated time.

Pods are modelled as they run in the SFU: every WINDOW each pod with audio publishers reports
their mean loudness (a ``SpeakerLevels``), every pod ticks, the deciding pod's decision (an
``ActiveSpeaker``) reaches every pod, which turns it into lines for its subscribers. The bus is
a list delivered in order to every pod, as NATS delivers one subject.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sfu_helpers import start_sfu, wait_for
from tests.test_events import base, next_of, running_server
from trio_sfu.client.events import room_events
from trio_sfu.cluster.codec import decode, encode
from trio_sfu.proto.rtp import RtpPacket, find_extension, loudness, packet_loudness
from trio_sfu.sfu.model import ActiveSpeaker, SpeakerLevels
from trio_sfu.sfu.room import Room
from trio_sfu.sfu.speaker import NODE_STALE, WINDOW, RoomSpeakers, speakers_line

PACKETS_PER_WINDOW = round(WINDOW / 0.02)  # 20 ms Opus frames


class Cluster:
    def __init__(self, pods: list[str], homes: dict[str, str]) -> None:
        self.pods = {name: RoomSpeakers(name) for name in pods}
        self.homes = homes  # publisher -> its pod
        self.lines: dict[str, list[tuple[float, str]]] = {name: [] for name in pods}
        self.now = 0.0
        self.down: set[str] = set()  # pods that stopped (crashed)

    def window(self, level_of: dict[str, int]) -> None:
        """One WINDOW: packets at RFC 6464 ``level_of[pub]`` (-dBov), reports, ticks, decisions."""
        self.now += WINDOW
        bus: list[SpeakerLevels | ActiveSpeaker] = []
        for name, pod in self.pods.items():
            if name in self.down:
                continue
            sums = []
            for pub, home in self.homes.items():
                if home == name and pub in level_of:
                    value = loudness(bytes([level_of[pub]]))
                    sums.append((pub, value * PACKETS_PER_WINDOW, PACKETS_PER_WINDOW))
            decision = pod.tick(self.now)
            if sums:
                bus.append(SpeakerLevels("r", name, RoomSpeakers.report(sums)))
            if decision is not None:
                bus.append(ActiveSpeaker("r", name, *decision))
        for command in bus:
            command = decode(encode(command))  # what NATS would carry
            for name, pod in self.pods.items():
                if name in self.down:
                    continue
                if isinstance(command, SpeakerLevels):
                    pod.heard_levels(command.node, command.levels, self.now)
                else:
                    for line in pod.heard_decision(command.speaker, command.levels, self.now):
                        self.lines[name].append((self.now, line))

    def run(self, seconds: float, level_of: dict[str, int]) -> None:
        for _ in range(round(seconds / WINDOW)):
            self.window(level_of)

    def speakers(self, pod: str, since: float = 0.0) -> list[tuple[float, str]]:
        return [(t, line.split()[1]) for t, line in self.lines[pod]
                if t > since and line.startswith("SPEAKER ")]


def test_louder_publisher_wins_and_swap_follows_across_pods() -> None:
    """Publishers on pods a and b, a subscriber's pod c hears SPEAKER for the louder within 2 s
    of it becoming louder, both times; every pod tells its subscribers the same."""
    c = Cluster(["a", "b", "c"], {"p1": "a", "p2": "b"})
    c.run(3.0, {"p1": 20, "p2": 50})  # p1 at -20 dBov, p2 at -50 dBov
    first = c.speakers("c")
    assert [s for _, s in first] == ["p1"]
    assert first[0][0] <= 2.0
    swap = c.now
    c.run(4.0, {"p1": 50, "p2": 20})
    after = c.speakers("c", since=swap)
    assert [s for _, s in after] == ["p2"]
    assert after[0][0] - swap <= 2.0, after
    for pod in ("a", "b"):
        assert [s for _, s in c.speakers(pod)] == ["p1", "p2"]
    assert all(p.speaker == "p2" for p in c.pods.values())


def test_one_pod_decides_the_smallest_reporting_one() -> None:
    c = Cluster(["b", "a", "c"], {"p1": "a", "p2": "b"})
    c.run(1.0, {"p1": 30, "p2": 30})
    assert [n for n, p in c.pods.items() if p.deciding] == ["a"]
    assert not c.pods["c"].deciding  # no publishers: it reports nothing, never decides


def test_decider_failure_hands_over_and_keeps_the_speaker() -> None:
    """Pod a (the decider) crashes: b takes over within NODE_STALE + a window, continuing from
    the speaker it followed, and a's publishers are forgotten."""
    c = Cluster(["a", "b", "c"], {"p1": "a", "p2": "b", "p3": "b"})
    c.run(3.0, {"p1": 50, "p2": 20, "p3": 60})
    assert c.pods["c"].speaker == "p2"
    c.down.add("a")
    crash = c.now
    c.run(NODE_STALE + 2 * WINDOW, {"p2": 20, "p3": 60})
    assert c.pods["b"].deciding
    assert c.speakers("c", since=crash) == []  # no spurious change at the hand-over
    c.run(4.0, {"p2": 60, "p3": 20})
    assert [s for _, s in c.speakers("c", since=crash)] == ["p3"]


def test_no_flapping_between_similar_speakers_and_bounded_messages() -> None:
    rnd = random.Random(7)
    c = Cluster(["a", "b"], {"p1": "a", "p2": "b"})
    for _ in range(round(20 / WINDOW)):
        c.window({"p1": 30 + rnd.randint(0, 3), "p2": 30 + rnd.randint(0, 3)})
    changes = c.speakers("a")
    assert len(changes) == 1  # the first choice stays: 3 dB wobble never clears the margin
    levels = [t for t, line in c.lines["a"] if line.startswith("SPEAKERS")]
    assert len(levels) <= 20 / 0.5 + 1
    assert all(t2 - t1 >= 0.25 for t1, t2 in itertools.pairwise(levels))


def test_speakers_line_and_silence() -> None:
    assert speakers_line((("a", -20), ("b", -45))) == "SPEAKERS a:-20 b:-45"
    assert speakers_line(()) == "SPEAKERS"
    c = Cluster(["a"], {"p1": "a"})
    c.run(2.0, {"p1": 127})  # silent: below the floor, never a speaker, listed nowhere
    assert c.speakers("a") == []
    assert all(line == "SPEAKERS" for _, line in c.lines["a"])


def test_codec_round_trip_and_bounds() -> None:
    levels = SpeakerLevels("r", "pod-1", (("alice-1", 127), ("bob-2", 0)))
    assert decode(encode(levels)) == levels
    active = ActiveSpeaker("r", "pod-1", "alice-1", (("alice-1", -20),))
    assert decode(encode(active)) == active
    bad = SpeakerLevels("r", "pod-1", (("alice-1", 500),))
    try:
        decode(encode(bad))
    except ValueError:
        pass
    else:
        raise AssertionError("a level out of range must not decode")


def test_packet_loudness_reads_in_place() -> None:
    pkt = RtpPacket(payload_type=111, sequence_number=1, timestamp=2, ssrc=3, payload=b"x")
    pkt.extensions[3] = b"\x01\x02"
    pkt.extensions[1] = bytes([0x80 | 33])
    data = pkt.serialize()
    assert packet_loudness(data, 1) == 94
    assert packet_loudness(data, 2) == 0  # absent: silence
    assert packet_loudness(data[:20], 1) == 0  # truncated extension block
    plain = RtpPacket(payload_type=111, sequence_number=1, timestamp=2, ssrc=3, payload=b"x")
    assert packet_loudness(plain.serialize(), 1) == 0
    # RFC 8285 §4.3 two-byte header form
    two = bytearray(12) + bytes([0x10, 0x00, 0x00, 0x01, 1, 1, 5, 0]) + b"x"
    two[0] = 0x90
    assert packet_loudness(bytes(two), 1) == 122


async def test_room_speaker_hook_and_idle_timer() -> None:
    """The allocator's accessor: ``room.speaker`` and ``speaker_listeners`` follow the bus's
    decisions; a room without audio reports nothing (its timer sleeps)."""
    async with trio.open_nursery() as nursery:
        env = await start_sfu(nursery)
        await env.subscriber("r1", "watch-1")
        room = env.sfu.rooms["r1"]
        heard: list[str] = []
        room.speaker_listeners.append(heard.append)
        assert room.speaker is None
        sent: list[object] = []
        async with env.sfu.bus.listen("r1") as commands:
            # another pod reports alice-1 (so this pod tracks her), then decides
            await env.sfu.bus.publish("r1", SpeakerLevels("r1", "other", (("alice-1", 90),)))
            await env.sfu.bus.publish("r1", ActiveSpeaker("r1", "other", "alice-1", ()))
            with trio.move_on_after(1.0):
                async for command in commands:
                    sent.append(command)
        await wait_for(lambda: room.speaker == "alice-1")
        assert heard == ["alice-1"]
        # only what we published: no report from a room without publishers here, and no
        # decision either (the reporting pod decides)
        assert [type(c).__name__ for c in sent] == ["SpeakerLevels", "ActiveSpeaker"]
        nursery.cancel_scope.cancel()


async def test_room_events_stream_each_speaker_change_once() -> None:
    """``GET /rooms/{room}/events``: a ``speaker`` event per change of the room's speaker; the
    decider's repeats and the pods' level reports are not events."""
    async with running_server() as running, room_events(base(running), "r") as events:
        await next_of(events, "room")
        bus = running.sfu.bus  # type: ignore[attr-defined]
        await bus.publish("r", SpeakerLevels("r", "pod-a", (("amy-1", 100),)))
        await bus.publish("r", ActiveSpeaker("r", "pod-a", "", ()))  # nobody yet: no event
        await bus.publish("r", ActiveSpeaker("r", "pod-a", "amy-1", (("amy-1", -20),)))
        await bus.publish("r", ActiveSpeaker("r", "pod-a", "amy-1", (("amy-1", -21),)))
        await bus.publish("r", ActiveSpeaker("r", "pod-a", "ben-1", (("ben-1", -18),)))
        seen = []
        with trio.fail_after(10):
            async for event in events:
                seen.append(event)
                if event.get("peer") == "ben-1":
                    break
        assert [(e["type"], e["peer"]) for e in seen] == [("speaker", "amy-1"),
                                                          ("speaker", "ben-1")]
        assert seen[0]["levels"] == [{"peer": "amy-1", "dbov": -20}]
        assert seen[0]["room"] == "r" and "ts" in seen[0]


@settings(max_examples=500, deadline=None)
@given(
    st.binary(min_size=0, max_size=12),
    st.sampled_from([b"\xbe\xde", b"\x10\x00", b"\x10\x07", b"\x00\x01"]),
    st.integers(0, 6),
    st.binary(max_size=28),
    st.integers(1, 14),
)
def test_packet_loudness_agrees_with_find_extension(
    head: bytes, profile: bytes, words: int, body: bytes, ext_id: int
) -> None:
    """The in-place reader reads what :func:`find_extension` finds, on any bytes."""
    data = bytes([0x90]) + head.ljust(11, b"\x00") + profile + bytes([0, words]) + body
    assert packet_loudness(data, ext_id) == loudness(find_extension(data, ext_id))


def test_a_decision_crossing_the_speakers_departure_is_ignored() -> None:
    """The decider published ActiveSpeaker(p1) just before p1's PubLeft reached it; a pod that
    applied the PubLeft first must not name the departed publisher."""
    c = Cluster(["a", "b"], {"p1": "a", "p2": "b"})
    c.run(3.0, {"p1": 20, "p2": 60})
    pod = c.pods["b"]
    assert pod.speaker == "p1"
    pod.publisher_left("p1")
    assert pod.speaker is None
    lines = pod.heard_decision("p1", (("p1", -20), ("p2", -60)), c.now + 1)
    assert not any(line.startswith("SPEAKER ") for line in lines), lines
    assert all("p1" not in line for line in lines), lines
    assert pod.speaker is None


def test_rooms_tick_their_speaker_windows_on_one_grid() -> None:
    """Every room's speaker window ends on the same grid of Trio's clock, whenever the room
    began to hear audio: a pod's rooms report and tick in one pass of the run loop, not each
    on a wake-up of its own (issue 10)."""
    ticked: dict[str, list[float]] = {"r1": [], "r2": []}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            env = await start_sfu(nursery)
            for name, times in ticked.items():
                room = await env.sfu._room(name)
                inner = room.speakers.tick

                def tick(now: float, inner: Any = inner, times: list[float] = times) -> Any:
                    times.append(now)
                    return inner(now)

                room.speakers.tick = tick  # type: ignore[method-assign]
            await trio.sleep(0.07)  # off the grid
            for name in ("r1", "r2"):
                # another pod's report: the room has audio to follow from now on
                await env.sfu.bus.publish(name, SpeakerLevels(name, "other", (("amy-1", 90),)))
                await trio.sleep(0.1)
            for _ in range(3):
                await trio.sleep(WINDOW)
                for name in ("r1", "r2"):
                    await env.sfu.bus.publish(name, SpeakerLevels(name, "other", (("amy-1", 90),)))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    first, second = ticked["r1"], ticked["r2"]
    assert len(first) >= 3 and len(second) >= 3
    for now in first + second:
        assert now / WINDOW == pytest.approx(round(now / WINDOW), abs=1e-6)
    assert second == first[-len(second) :]  # the same instants, though r2 began 0.1 s later


class _AudioTrack:
    level_id = 1

    def take_levels(self) -> tuple[int, int]:
        return 90 * 12, 12  # a window of 12 packets at loudness 90


class _AudioPublisher:
    id = "amy-1"
    announced = True
    tracks = (_AudioTrack(),)


def test_one_pod_decides_its_speaker_with_no_reports_on_the_bus() -> None:
    """With one pod nobody else needs a room's level reports: its own go into its detector
    as they are made, so a window is one task step, and only decisions go on the bus (the
    room's events and its listener follow them)."""
    from tests.test_room_context import Host

    seen: list[object] = []

    async def main() -> None:
        host = Host()
        async with trio.open_nursery() as nursery:
            host.spawn = nursery.start_soon  # type: ignore[method-assign]
            room = Room(host, "r")  # type: ignore[arg-type]
            room.publishers["amy-1"] = _AudioPublisher()  # type: ignore[assignment]
            async with host.bus.listen("r") as commands:
                await nursery.start(room.listen)
                with trio.move_on_after(3.0):
                    async for command in commands:
                        seen.append(command)
            assert room.speaker == "amy-1"
            room.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen, "no decision"
    assert not [c for c in seen if isinstance(c, SpeakerLevels)]
    assert all(isinstance(c, ActiveSpeaker) for c in seen)
    assert seen[-1].speaker == "amy-1"  # type: ignore[attr-defined]
