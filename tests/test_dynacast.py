"""Dynacast (issue 11, item 5): a simulcast publisher is told which streams some subscriber
needs, so it can stop encoding the rest.

The core (:class:`LayerDemand`) on its own, then through the real forwarding path of
``tests/test_simulcast_forwarding.py`` (``PublishedTrack`` → groups → ``DownTrack`` → SRTP)
with a publisher that obeys: it sends only the announced streams and starts a resumed stream
with a keyframe, as libwebrtc does when an encoding becomes active. Whatever subscribers do,
every one of them keeps getting the stream it asked for, and nothing nobody needs stays on.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_simulcast_forwarding import RIDS, World
from trio_sfu.sfu.dynacast import PAUSE_AFTER, LayerDemand


def test_a_stream_pauses_only_after_being_unneeded_for_a_while_and_resumes_at_once() -> None:
    demand = LayerDemand(["q", "h", "f"])
    assert demand.active == {0, 1, 2}
    assert demand.update({2}, 10.0) is None  # q and h unneeded from now on
    assert demand.update({2}, 10.0 + PAUSE_AFTER / 2) is None
    assert demand.update({1, 2}, 10.0 + PAUSE_AFTER - 0.1) is None  # h needed again: reset
    assert demand.update({2}, 10.0 + PAUSE_AFTER) == {1, 2}  # q's pause is due
    assert demand.announced_rids() == ("h", "f")
    assert demand.update({2}, 10.0 + PAUSE_AFTER + 1) is None  # h's clock restarted
    assert demand.update(set(), 10.0 + 2 * PAUSE_AFTER) == {2}
    assert demand.update(set(), 10.0 + 3 * PAUSE_AFTER) == set()
    assert demand.announced_rids() == ()
    assert demand.missing(0) and demand.missing(2) and not demand.missing(5)
    assert demand.update({0}, 10.0 + 3 * PAUSE_AFTER + 0.01) == {0}  # at once
    assert not demand.missing(0)


class ObedientWorld(World):
    """The publisher sends only what it was last told (``LAYERS``); a stream it resumes
    starts with a keyframe, and a PLI for any stream it sends gets one on its next frame."""

    def __init__(self) -> None:
        super().__init__()
        self.told: tuple[str, ...] = tuple(RIDS)
        self.rising = 0
        self.track.on_demand = self._rose
        self._restart: set[int] = set()

    def _rose(self) -> None:
        self.rising += 1

    def plan(self) -> None:
        rids = self.track.plan_demand(self.now)
        if rids is not None:
            resumed = {RIDS.index(r) for r in rids} - {RIDS.index(r) for r in self.told}
            self._restart |= resumed
            self.told = rids

    def obedient_frame(self, keys: int, lose: int) -> None:
        plis = set(self.plis())
        self.pub_leg.rtcp.clear()
        sent = tuple(rid in self.told for rid in RIDS)
        asked = [i in self._restart or self.streams[i].ssrc in plis for i in range(3)]
        flags = (
            bool(keys & 1) or asked[0],
            bool(keys & 2) or asked[1],
            bool(keys & 4) or asked[2],
        )
        self._restart.clear()
        self.frame(flags, lose, sent)


def test_only_the_streams_in_use_stay_on_and_a_new_viewer_resumes_the_top() -> None:
    world = ObedientWorld()
    world.join()
    world.obedient_frame(0b111, 0)
    sub = world.subs[0]
    assert world.track.needed_layers() == {2}
    sub.downtrack.set_layer(0, world.now)
    for _ in range(3):
        world.obedient_frame(0, 0)
    world.obedient_frame(0b001, 0)  # q's keyframe: the switch down completes
    assert sub.downtrack.forwarded_layer == 0
    assert world.track.needed_layers() == {0}
    world.plan()
    assert world.told == ("q", "h", "f")  # not yet: unneeded for less than PAUSE_AFTER
    for _ in range(int(PAUSE_AFTER * 30) + 2):
        world.obedient_frame(0, 0)
        world.plan()
    assert world.told == ("q",)
    # A second viewer: it waits at the gate for the top stream, which is off. Asking for the
    # keyframe tells the publisher at once (on_demand) and the plan resumes it.
    rising = world.rising
    world.join()
    world.subs[1].downtrack.request_keyframe(world.now)
    assert world.rising > rising
    world.plan()
    assert world.told == ("q", "f")
    for _ in range(3):
        world.obedient_frame(0, 0)
    assert world.subs[1].leg.received, "the resumed top stream reached the new viewer"
    world.check()


def test_a_subscriber_switching_up_to_a_paused_stream_resumes_it_at_once() -> None:
    world = ObedientWorld()
    world.join()
    sub = world.subs[0].downtrack
    sub.request_keyframe(world.now)
    sub.set_layer(0, world.now)
    for _ in range(int(PAUSE_AFTER * 30) + 40):
        world.obedient_frame(0, 0)
        world.plan()
        world.track.tick(world.now)
    assert world.told == ("q",) and sub.forwarded_layer == 0
    rising = world.rising
    sub.set_layer(1, world.now)
    assert world.rising > rising  # the keyframe request for h told the publisher
    world.plan()
    assert world.told == ("q", "h")
    for _ in range(3):
        world.obedient_frame(0, 0)
    assert sub.forwarded_layer == 1  # h came back with a keyframe, and the switch was made
    world.check()


Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), st.integers(0, 7), st.integers(0, 3)),
        st.tuples(st.just("join"), st.just(0), st.just(0)),
        st.tuples(st.just("layer"), st.integers(0, 20), st.integers(0, 2)),
        st.tuples(st.just("leave"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("pause"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("resume"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 8), st.just(0)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_an_obedient_publisher_never_starves_a_subscriber(script: list[Op]) -> None:
    """Random joins, leaves, layer choices and pauses, with the publisher sending only what
    it was told: in the end every subscriber that is not paused receives the stream it
    asked for, each stream is on exactly when someone needs it (after the pause delay), and
    every subscriber's output is one continuous decodable stream."""
    world = ObedientWorld()
    world.join()

    def step() -> None:
        world.obedient_frame(0, 0)
        world.plan()
        if world.track.next_timer() <= world.now:
            world.track.tick(world.now)

    for name, a, b in script:
        live = [s for s in world.subs if s.active]
        sub = live[a % len(live)] if live else None
        if name == "frame":
            world.obedient_frame(a, b)
            world.plan()
        elif name == "join":
            world.join()
            world.subs[-1].downtrack.request_keyframe(world.now)
        elif name == "wait":
            for _ in range(a * 25):  # up to 6.7 s: long enough for streams to pause
                step()
        elif sub is None:
            continue
        elif name == "layer":
            sub.downtrack.set_layer(b, world.now)
        elif name == "leave":
            sub.downtrack.close()
            sub.active = False
        elif name == "pause":
            sub.downtrack.pause()
        elif name == "resume":
            sub.downtrack.resume(world.now)
    # Settle: longer than the pause delay and the keyframe requests' throttle.
    for _ in range(int(PAUSE_AFTER * 30) + 60):
        step()
    needed = world.track.needed_layers()
    assert {RIDS.index(r) for r in world.told} == needed
    for sub in world.subs:
        if not sub.active or sub.downtrack.paused:
            continue
        top = len(RIDS) - 1
        want = sub.downtrack.layer if sub.downtrack.layer is not None else top
        assert sub.downtrack.forwarded_layer == want, (want, world.told)
        before = len(sub.leg.received)
        step()
        assert len(sub.leg.received) > before, "its stream flows"
    world.check()
