"""What the forwarding path leaves for the garbage collector (issue 10, "control stays
responsive at saturation").

At 450 subscribers every full (generation 2) collection walked the whole peer heap for
0.1-0.4 s, and ran every few seconds: what triggers one is objects promoted into the old
generation, and what promoted them was the pace of young collections — one every ~700 tracked
objects kept alive. The bandwidth estimator kept a ``(send time, size, probe)`` tuple per
packet sent until its transport-cc feedback: at 70-90k packets/s a young collection every
~8 ms, each promoting every timer's sleeping task into the old generation.

These tests count, deterministically (the collector disabled, ``gc.get_count()``: tracked
objects allocated minus freed since the last collection), what stays tracked per packet on
the real path, and check the collection policy (trio_sfu/gcpolicy.py) frees what left.
"""

from __future__ import annotations

import gc
import os
import socket
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio
import trio.testing

from tests.fanout_helpers import VP8_KEYFRAME, fan_out, packet
from tests.sfu_helpers import start_sfu
from tests.task_steps import TaskSteps
from trio_sfu.gcpolicy import COMPACT_INTERVAL, LEAVE_SETTLE, MAX_FROZEN_AGE, GcPolicy
from trio_sfu.proto.bwe import BandwidthEstimator
from trio_sfu.rtc.server import RtcServer

SUBSCRIBERS = 20
PACKETS = 200  # incoming; x SUBSCRIBERS outbound


@contextmanager
def tracked_growth() -> Iterator[list[int]]:
    """Tracked objects allocated and still alive across the block (the collector off)."""
    gc.collect()
    gc.disable()
    grown = [0]
    try:
        start = gc.get_count()[0]
        yield grown
        grown[0] = gc.get_count()[0] - start
    finally:
        gc.enable()


def test_the_estimator_keeps_no_tracked_object_per_sent_packet() -> None:
    bwe = BandwidthEstimator()
    with tracked_growth() as grown:
        for i in range(5000):
            bwe.on_packet_sent(i & 0xFFFF, 1200, i * 0.001)
    assert grown[0] < 20  # was 5000: one (time, size, probe) tuple each


async def test_forwarding_keeps_no_tracked_object_per_outbound_packet() -> None:
    """1 publisher track -> 20 subscribers with transport-cc and an estimator each, the pod's
    own path (PublishedTrack.on_rtp -> group rewrite -> DownTrack.deliver -> SRTP -> sendto)."""
    server = RtcServer.bind("127.0.0.1")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        estimators = [BandwidthEstimator() for _ in range(SUBSCRIBERS)]
        setup = fan_out(
            server, sink.getsockname(), SUBSCRIBERS, lambda i: estimators[i].on_packet_sent
        )
        track, stream = setup.track, setup.stream
        now = trio.current_time()
        track.on_rtp(stream, packet(0, VP8_KEYFRAME + bytes(1093)), now)
        payload = os.urandom(1100)
        seq = 1
        for _ in range(2 * PACKETS):  # warm up: caches and tables at their working size
            track.on_rtp(stream, packet(seq, payload), now)
            seq += 1
        packets = [packet(seq + k, payload) for k in range(PACKETS)]
        sent_before = sum(len(b.unreported()) for b in estimators)
        with tracked_growth() as grown:
            for rtp in packets:
                track.on_rtp(stream, rtp, now)
        outbound = sum(len(b.unreported()) for b in estimators) - sent_before
        assert outbound == PACKETS * SUBSCRIBERS  # every one went through the estimator
        # At most a few per incoming packet (the source's cache), none per outbound one:
        # before, at least one per outbound packet (4,000 here).
        assert grown[0] < outbound // 10, (grown[0], outbound)
    finally:
        sink.close()
        server.close()


class _Peerish:
    """A stand-in for a peer's objects: a reference cycle, freed only by the collector."""

    def __init__(self) -> None:
        self.me = self
        self.blob = [bytes(100) for _ in range(10)]


def test_the_policy_freezes_survivors_and_compaction_frees_what_left() -> None:
    policy = GcPolicy()
    gc.collect()
    policy.install()
    try:
        peer = _Peerish()
        alive = weakref.ref(peer)
        gc.collect()  # a full collection: its survivors (the peer) are frozen
        assert policy.freezes == 1
        assert not any(o is peer for o in gc.get_objects())  # no collection walks it now
        del peer  # the peer leaves: its cycle is garbage, but frozen
        gc.collect()
        assert alive() is not None  # what compaction is for
        policy.compact()
        assert alive() is None
        assert policy.compactions == 1
    finally:
        policy.uninstall()
        gc.unfreeze()


POLICY_TASK = "GcPolicy.run"


@asynccontextmanager
async def running(policy: GcPolicy) -> AsyncIterator[TaskSteps]:
    """``policy.run`` in a task of its own, its steps (every wake-up, whatever woke it,
    independent of the policy's own ``wakeups`` counter) counted from its first one; cancelled
    (and the policy uninstalled, everything unfrozen) on exit."""
    steps = TaskSteps()
    gc.collect()
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(policy.run)
            await trio.testing.wait_all_tasks_blocked()  # it installed itself and sleeps
            assert steps.of(POLICY_TASK) == 1
            yield steps
            nursery.cancel_scope.cancel()
        assert policy._after_collection not in gc.callbacks
    finally:
        trio.lowlevel.remove_instrument(steps)
        gc.unfreeze()


async def test_an_idle_policy_sleeps_until_the_frozen_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No peer leaves: the policy's task is not woken at all until ``MAX_FROZEN_AGE`` (it
    looked at the peer count every second before: one wake-up a second of an idle pod)."""
    policy = GcPolicy()
    async with running(policy) as steps:
        await trio.sleep(MAX_FROZEN_AGE - 1)
        assert (steps.of(POLICY_TASK), policy.wakeups, policy.compactions) == (1, 0, 0)
        peer = _Peerish()
        alive = weakref.ref(peer)
        gc.collect()  # frozen
        del peer
        await trio.sleep(2)  # the age check: something was frozen since, so it compacts
        assert (steps.of(POLICY_TASK), policy.wakeups, policy.compactions) == (2, 1, 1)
        assert alive() is None
        await trio.sleep(MAX_FROZEN_AGE)  # nothing frozen since that compaction
        assert (steps.of(POLICY_TASK), policy.wakeups, policy.compactions) == (3, 2, 1)


async def test_the_policy_compacts_once_peers_have_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A leave leads to exactly one compaction within ``COMPACT_INTERVAL``; leaves in quick
    succession share one; nothing is compacted while nobody leaves."""
    policy = GcPolicy()
    async with running(policy) as steps:
        await trio.sleep(0.5)
        peer = _Peerish()
        alive = weakref.ref(peer)
        gc.collect()  # frozen
        del peer
        await trio.sleep(100)
        assert policy.compactions == 0  # nobody left: nothing to compact
        assert alive() is not None
        policy.note_left()  # one leaves, long after the start: compacted once it settled
        compacted_at = trio.current_time() + LEAVE_SETTLE
        await trio.sleep_until(compacted_at - 0.5)
        assert policy.compactions == 0
        await trio.sleep(1)
        assert policy.compactions == 1
        assert alive() is None
        # Two more right after a compaction: one compaction, COMPACT_INTERVAL after the last.
        # (Every look is half a second off a deadline: never a tie with the policy's task.)
        policy.note_left()
        policy.note_left()
        await trio.sleep_until(compacted_at + COMPACT_INTERVAL - 0.5)
        assert policy.compactions == 1
        await trio.sleep(1)
        assert policy.compactions == 2
        await trio.sleep(MAX_FROZEN_AGE - 2)
        assert policy.compactions == 2  # nothing frozen since but the compaction's survivors
        # Woken by the first leave, by the pair (one wait), and by each compaction's deadline;
        # not in between.
        assert policy.leaves == 3
        assert (steps.of(POLICY_TASK), policy.wakeups) == (1 + 4, 4)


async def test_a_subscriber_frozen_while_connected_is_freed_once_it_left(
    nursery: trio.Nursery,
) -> None:
    """The real peer heap: a subscriber connected during a full collection is frozen with it;
    after it leaves, a compaction frees its server side (connection and member)."""
    env = await start_sfu(nursery)
    await env.subscriber("room", "warm-1")  # first-use caches
    policy = GcPolicy()
    env.server.on_peer_left = policy.note_left  # as app.serve wires it
    gc.collect()
    policy.install()
    # Only the explicit collections below: an automatic full one while the subscriber joins
    # (more allocations on a loaded machine) would freeze the heap a second time.
    gc.disable()
    try:
        client = await env.subscriber("room", "s-1")
        member = env.sfu.rooms["room"].subscribers["s-1"]
        server_side = [weakref.ref(member), weakref.ref(member.pc)]
        gone = env.sfu.gone(member)
        assert gone is not None
        del member
        gc.collect()  # a full collection while connected: the subscriber's objects are frozen
        assert policy.freezes == 1
        client.pc.close("bye")
        # Its lifetime's end, not a poll of the room: the removal still refers to the member
        # across its last checkpoint (a loaded CI run compacted in that window).
        with trio.fail_after(10):
            await gone.wait()
        assert "s-1" not in env.sfu.rooms["room"].subscribers
        assert env.server.endpoint.peers() == 1
        assert policy.leaves >= 1  # the server told it (its teardown may tell it twice)
        policy.compact()
        assert [ref() for ref in server_side] == [None, None]
    finally:
        gc.enable()
        policy.uninstall()
        gc.unfreeze()
