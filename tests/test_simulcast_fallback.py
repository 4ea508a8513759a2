"""A simulcast publisher that does not send every stream it announced (issue 11).

libwebrtc announces q/h/f but sends only the streams its camera and uplink allow: a 320x240
camera sends q alone, and a publisher whose bandwidth drops stops f. Subscribers start on the
*default* stream (``Fanout.default``): the top one while it arrives, else the highest one
that does (``PublishedTrack.review_streams``). Through the real forwarding path of
``tests/test_simulcast_forwarding.py``: what each subscriber decrypts stays one continuous
stream, switches only at keyframes.
"""

from __future__ import annotations

from tests.test_dynacast import ObedientWorld
from tests.test_simulcast_forwarding import RIDS, World
from trio_sfu.sfu.dynacast import PAUSE_AFTER
from trio_sfu.sfu.track import STREAM_TIMEOUT

ONLY_Q = (True, False, False)
ALL = (True, True, True)


def run(world: World, seconds: float, sent: tuple[bool, ...], *, keys: int = 30) -> None:
    """Frames at 30/s for ``seconds`` (a keyframe on every stream each ``keys`` frames),
    reviewing the streams once a second as the publisher's timer does."""
    frames = int(seconds * 30)
    for i in range(frames):
        key = i % keys == 0
        world.frame((key, key, key), 0, sent)
        if i % 30 == 29:
            world.track.review_streams(world.now)
        if world.track.next_timer() <= world.now:
            world.track.tick(world.now)


def test_a_publisher_sending_only_its_low_stream_still_reaches_new_subscribers() -> None:
    world = World()
    run(world, STREAM_TIMEOUT + 2, ONLY_Q)
    assert world.track.fanout.default == 0
    world.join()
    run(world, 1.5, ONLY_Q)
    sub = world.subs[0]
    assert sub.downtrack.forwarded_layer == 0
    assert len(sub.leg.received) > 40  # a second of q, from its keyframe on
    world.check()


def test_subscribers_follow_the_top_stream_down_when_it_stops_and_back_when_it_returns() -> None:
    world = World()
    world.join()
    run(world, 2, ALL)
    sub = world.subs[0]
    assert sub.downtrack.forwarded_layer == 2 and world.track.fanout.default == 2
    # f stops (the publisher's uplink shrank): within a few seconds the default is h and
    # the subscriber is moved there at h's keyframe, without a choice of its own.
    run(world, STREAM_TIMEOUT + 2, (True, True, False))
    assert world.track.fanout.default == 1
    assert sub.downtrack.forwarded_layer == 1
    assert sub.downtrack.layer is None  # still following the default
    received = len(sub.leg.received)
    run(world, 1, (True, True, False))
    assert len(sub.leg.received) > received
    # f is back: the default climbs, and so does the subscriber, at f's keyframe.
    run(world, 3, ALL)
    assert world.track.fanout.default == 2
    assert sub.downtrack.forwarded_layer == 2
    world.check()


def test_a_subscriber_with_a_layer_of_its_own_stays_on_it() -> None:
    world = World()
    world.join()
    world.join()
    run(world, 2, ALL)
    chooser, follower = world.subs
    chooser.downtrack.set_layer(2, world.now)  # what it has: no change, still a follower
    chooser.downtrack.set_layer(1, world.now)
    run(world, 1, ALL)
    assert chooser.downtrack.forwarded_layer == 1
    run(world, STREAM_TIMEOUT + 2, ONLY_Q)
    assert world.track.fanout.default == 0
    assert follower.downtrack.forwarded_layer == 0
    # h stopped too: the chooser's own target is gone, so it paused at its down-switch
    # deadline; it is not moved by the default (its LAYER or the planner decide)
    assert chooser.downtrack.layer == 1
    world.check()


def test_streams_paused_by_dynacast_are_not_taken_for_missing_ones() -> None:
    """A stream the SFU told the publisher to stop (LAYERS) is still the default: a new
    subscriber resumes it rather than starting low."""
    world = ObedientWorld()
    world.join()
    world.obedient_frame(0b111, 0)
    sub = world.subs[0]
    sub.downtrack.set_layer(0, world.now)
    for i in range(int((PAUSE_AFTER + STREAM_TIMEOUT + 2) * 30)):
        world.obedient_frame(0b001 if i % 30 == 0 else 0, 0)
        world.plan()
        if i % 30 == 29:
            world.track.review_streams(world.now)
    assert world.told == ("q",)
    assert world.track.fanout.default == 2
    world.join()
    world.subs[1].downtrack.request_keyframe(world.now)
    world.plan()
    assert world.told == ("q", "f")
    for _ in range(3):
        world.obedient_frame(0, 0)
    assert world.subs[1].downtrack.forwarded_layer == 2
    world.check()


def obedient_seconds(world: ObedientWorld, n: float, sent: tuple[bool, bool, bool]) -> None:
    """``n`` seconds of frames at 30/s from a publisher whose encoder can send the streams in
    ``sent`` (its uplink and CPU allow them) and sends those of them it was told to
    (``LAYERS``); keyframes once a second, the streams reviewed once a second and the
    demand planned on every frame, as the publisher's timer does."""
    for i in range(int(n * 30)):
        key = i % 30 == 0
        told = tuple(a and rid in world.told for a, rid in zip(sent, RIDS, strict=True))
        world.frame((key, key, key), 0, told)
        world.plan()
        if i % 30 == 29:
            world.track.review_streams(world.now)
        if world.track.next_timer() <= world.now:
            world.track.tick(world.now)


def test_a_stream_that_stopped_on_its_own_stays_announced_and_is_taken_back() -> None:
    """f stops arriving while wanted (the publisher's uplink estimate or CPU shrank), so the
    subscriber moves to h, and f is not the default while it is absent (no bouncing between
    h and a stream that does not come). Dynacast pauses q (nobody needs it) but keeps f
    announced: pausing a stream the encoder does not send saves nothing, and a paused
    encoding can never come back on its own, so nobody would ever see f again. When the
    encoder can send f again it does, the default climbs and so does the subscriber."""
    world = ObedientWorld()
    world.join()
    sub = world.subs[0]
    obedient_seconds(world, 2, ALL)
    obedient_seconds(world, STREAM_TIMEOUT + 2, (True, True, False))  # the encoder leaves f out
    assert world.track.fanout.default == 1 and sub.downtrack.forwarded_layer == 1
    obedient_seconds(world, PAUSE_AFTER + 3, (True, True, False))
    assert world.told == ("h", "f")  # q paused (unneeded); f still announced
    assert world.track.fanout.default == 1
    assert sub.downtrack.forwarded_layer == 1
    obedient_seconds(world, 3, ALL)  # the encoder sends f again
    assert world.track.fanout.default == 2
    assert sub.downtrack.forwarded_layer == 2
    world.check()


def test_a_top_stream_the_encoder_starts_late_is_not_paused_before_it_comes() -> None:
    """The CI flake of tests/test_simulcast_netns.py and tests/test_site_layers.py: a
    browser starts its uplink estimate low (libwebrtc: 300 kbit/s) and adds h and f as it
    grows, which on a loaded machine took longer than STREAM_TIMEOUT + PAUSE_AFTER. The
    subscriber, following the default, was on q; h and f, missing and unneeded, were paused
    with ``LAYERS q``, the encoder never started them, and the subscriber stayed on q for
    good (bob at 187 kbit/s on the low stream). Streams not yet sent stay announced, so the
    subscriber climbs to f once the encoder sends it."""
    world = ObedientWorld()
    world.join()
    sub = world.subs[0]
    obedient_seconds(world, STREAM_TIMEOUT + PAUSE_AFTER + 3, ONLY_Q)
    assert world.track.fanout.default == 0 and sub.downtrack.forwarded_layer == 0
    assert world.told == ("q", "h", "f")
    obedient_seconds(world, 3, ALL)  # the uplink estimate grew: h and f come
    assert world.track.fanout.default == 2
    assert sub.downtrack.forwarded_layer == 2
    assert world.told == ("q", "h", "f")  # q and h are paused after PAUSE_AFTER unneeded
    world.check()


def test_a_stream_paused_mid_second_keeps_what_it_cost_while_it_flowed() -> None:
    """The layer planner asks what resuming a paused stream would cost (its last measured
    bitrate). A stream that stops a third of the way into a sampling second (dynacast
    paused it) must not be measured over the whole second: that third of its rate made h
    look cheap, and the planner of a subscriber capped at 400 kbit/s switched her up to it
    on an estimate that could not carry it (test_simulcast_netns: carol on 640 px for 4 s
    of her capped window). What it cost while it flowed stands until it flows again."""
    world = World()
    world.join()

    def rates() -> tuple[float, ...]:
        return world.track.layer_bitrates(world.now)

    # sampled every 31 frames (a little over a second at 30 frames/s)
    for i in range(60):  # two seconds of all three streams, no keyframes after the first
        world.frame((i == 0,) * 3, 0, ALL)
    rates()
    for _ in range(31):
        world.frame((False, False, False), 0, ALL)
    full = rates()
    assert full[1] > 0
    for i in range(31):  # h stops after 10 frames: paused
        world.frame((False, False, False), 0, ALL if i < 10 else (True, False, True))
    paused = rates()
    assert paused[1] >= 0.9 * full[1], (full, paused)
    assert paused[0] >= 0.9 * full[0] and paused[2] >= 0.9 * full[2]
    for _ in range(31):  # a second of nothing: still what it cost
        world.frame((False, False, False), 0, (True, False, True))
    assert rates()[1] == paused[1]
    # a stream that stops two thirds into the second is measured over those two thirds
    for _ in range(31):
        world.frame((False, False, False), 0, ALL)
    rates()
    for i in range(31):
        world.frame((False, False, False), 0, ALL if i < 21 else (True, False, True))
    assert rates()[1] >= 0.9 * full[1]
