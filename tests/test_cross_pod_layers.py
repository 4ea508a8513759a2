"""Simulcast across pods (issue 11): the publisher's pod relays each stream under its own name,
only while another pod wants it; the receiving pod's ``RemoteTrack`` is a layered source whose
subscribers switch streams like local ones, and which subscribes to exactly the streams its
groups need.

Pod A is the real ``PublishedTrack`` path of ``tests/test_simulcast_forwarding.py`` (three
VP8 streams q/h/f); pod B is a real ``RemoteTrack`` with real ``DownTrack``s and SRTP; between
them an in-memory relay with the relay's semantics (a stream's sink is a no-op unless some pod
subscribed to its name). What pod B's subscribers decrypt must be one continuous stream each,
switching only at keyframes, and pod A must relay (and, with dynacast, ask its publisher to
encode) only what pod B's subscribers watch.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from tests.test_forwarding_groups import PROFILE, SubscriberLeg, subscriber_transceiver
from tests.test_simulcast_forwarding import RIDS, World
from trio_sfu.proto.codecs.vp8 import parse_descriptor
from trio_sfu.proto.rtp import parse_rtp
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.sfu.bus import LocalBus
from trio_sfu.sfu.dynacast import PAUSE_AFTER
from trio_sfu.sfu.model import Command, KeyframeRequest, PublisherInfo, relay_stream
from trio_sfu.sfu.remote import RELEASE_AFTER, RemoteTrack
from trio_sfu.sfu.track import DownTrack


class Sink:
    """A relay sender: forwards to pod B's handler while pod B is subscribed."""

    def __init__(self) -> None:
        self.handler: Callable[[bytes, float], None] | None = None
        self.now = 0.0
        self.relayed = 0

    @property
    def wanted(self) -> bool:
        return self.handler is not None

    def __call__(self, packet: bytes) -> None:
        if self.handler is not None:
            self.relayed += 1
            self.handler(packet, self.now)

    def close(self) -> None:
        self.handler = None


class Relay:
    def __init__(self) -> None:
        self.sinks: dict[str, Sink] = {}

    def sender(self, publisher_id: str, name: str) -> Sink:
        return self.sinks.setdefault(name, Sink())

    @asynccontextmanager
    async def subscribe(
        self, node: str, publisher_id: str, name: str, on_packet: Callable[[bytes, float], None]
    ) -> AsyncIterator[None]:
        sink = self.sender(publisher_id, name)
        if sink.handler is not None:  # as MediaRelay: one subscription per stream and pod
            raise ValueError(f"already receiving {name}")
        sink.handler = on_packet
        try:
            yield
        finally:
            # unwinding takes a moment (the real relay's order of tasks decides how long)
            with trio.CancelScope(shield=True):
                await trio.sleep(0.01)
            sink.handler = None


class Pods:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.world = World()
        self.relay = Relay()
        track = self.world.track
        # pod A's publisher opens one entry per stream (Publisher._open_relay)
        track.relay_sink = self.relay.sender("pub", "t")  # type: ignore[assignment]
        for layer, rid in enumerate(RIDS):
            name = relay_stream("t", None if layer == len(RIDS) - 1 else rid)
            track.layer_sinks[layer] = self.relay.sender("pub", name)  # type: ignore[assignment]
        self.sent: list[Command] = []
        outer = self

        class Bus(LocalBus):
            async def send_to_node(self, node_id: str, command: Command) -> None:
                outer.sent.append(command)
                await trio.lowlevel.checkpoint()

        self.remote = RemoteTrack(
            "r",
            PublisherInfo("pub", "pub", "pod-a"),
            track.info,
            spawn=nursery.start_soon,
            relay=self.relay,  # type: ignore[arg-type]
            bus=Bus(),
            on_idle=lambda _: None,
        )
        self.subs: list[tuple[SubscriberLeg, DownTrack]] = []

    def join(self) -> DownTrack:
        index = len(self.subs)
        a, b = os.urandom(28), os.urandom(28)
        leg = SubscriberLeg(f"b{index}", SrtpContext(PROFILE, a, b), SrtpContext(PROFILE, b, a), 3)
        downtrack = DownTrack(
            leg,  # type: ignore[arg-type]
            subscriber_transceiver(0, index),
            self.remote,
            twcc=leg.twcc,
        )
        assert downtrack.activate()
        self.remote.attach(downtrack)
        self.subs.append((leg, downtrack))
        return downtrack

    async def frames(self, count: int, *, keys: int = 15) -> None:
        """Frames on every stream at 30/s of (virtual) time; a keyframe each ``keys``."""
        world = self.world
        for i in range(count):
            key = i % keys == 0
            for sink in self.relay.sinks.values():
                sink.now = world.now + 1 / 30
            world.frame((key, key, key), 0)
            await trio.testing.wait_all_tasks_blocked()

    def relayed(self) -> set[str]:
        return {name for name, sink in self.relay.sinks.items() if sink.wanted}

    def check(self) -> None:
        """Each pod-B subscriber: one SSRC, numbering without gaps, stream changes only at a
        keyframe's first packet with the VP8 picture id going on by one."""
        for leg, downtrack in self.subs:
            prev = None
            for raw in leg.received:
                p = parse_rtp(raw)
                assert p.ssrc == downtrack.transceiver.sender_ssrc
                desc = parse_descriptor(p.payload)
                assert desc is not None and desc.picture_id is not None
                tag = p.payload.index(b"\xee", desc.size)
                stream, part = p.payload[tag + 1], p.payload[tag + 2]
                frame = int.from_bytes(p.payload[tag + 3 : tag + 7], "big")
                if prev is None:
                    assert part == 0 and self.world.key_sent[(stream, frame)]
                else:
                    pseq, ppid, pstream = prev
                    assert (p.sequence_number - pseq) & 0xFFFF == 1
                    if stream != pstream:
                        assert part == 0 and self.world.key_sent[(stream, frame)]
                        assert desc.picture_id == (ppid + 1) & 0x7FFF
                prev = (p.sequence_number, desc.picture_id, stream)


async def test_the_receiving_pod_takes_only_the_streams_its_subscribers_watch(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    pods = Pods(nursery)
    assert pods.remote.rids == ("q", "h", "f")
    sub = pods.join()
    await trio.testing.wait_all_tasks_blocked()
    assert pods.relayed() == {"t"}  # a new subscriber starts on the top stream
    await pods.frames(20)
    assert sub.forwarded_layer == 2
    assert pods.subs[0][0].received
    # LAYER low on pod B: pod B subscribes to q and asks pod A for its keyframe by name
    sub.set_layer(0, trio.current_time())
    await trio.testing.wait_all_tasks_blocked()
    assert pods.relayed() == {"t", "t/q"}
    assert KeyframeRequest("r", "pub", "t/q") in pods.sent
    await pods.frames(20)
    assert sub.forwarded_layer == 0
    # f unneeded for RELEASE_AFTER: pod B lets it go, and pod A relays q alone
    await trio.sleep(RELEASE_AFTER + 1)
    await pods.frames(5)
    assert pods.relayed() == {"t/q"}
    f_relayed = pods.relay.sinks["t"].relayed
    await pods.frames(30)
    assert pods.relay.sinks["t"].relayed == f_relayed
    # dynacast on pod A: only q is needed by anyone, so the publisher is told q alone
    track = pods.world.track
    assert track.needed_layers() == {0}
    now = trio.current_time()
    track.plan_demand(now)
    assert track.plan_demand(now + PAUSE_AFTER + 0.1) == ("q",)
    # a second pod-B subscriber starts on the top stream: pod B subscribes to f again
    pods.join()
    await trio.testing.wait_all_tasks_blocked()
    assert pods.relayed() == {"t", "t/q"}
    await pods.frames(20)
    assert pods.subs[1][1].forwarded_layer == 2
    pods.check()


async def test_layer_bitrates_and_widths_of_relayed_streams(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """The planner on pod B sees each relayed stream's measured rate and width (a stream
    never received here reads 0: the planner assumes a typical rate for it)."""
    pods = Pods(nursery)
    sub = pods.join()
    sub.set_layer(1, trio.current_time())  # before its first keyframe: it starts on h
    await trio.testing.wait_all_tasks_blocked()
    await pods.frames(20)
    assert pods.relayed() == {"t", "t/h"}
    assert sub.forwarded_layer == 1
    pods.remote.layer_bitrates(trio.current_time())
    await pods.frames(45)
    await trio.sleep(1.0)
    rates = pods.remote.layer_bitrates(trio.current_time())
    assert rates[0] == 0 and rates[1] > 0 and rates[2] > 0
    assert pods.remote.layer_widths() == (0, 640, 1280)


async def test_a_stream_needed_again_while_its_release_unwinds_is_subscribed_again(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """Released and needed again in the same moment: the new subscription waits for the old
    one to unwind (the relay allows one per stream) instead of failing the SFU's task."""
    pods = Pods(nursery)
    sub = pods.join()
    sub.set_layer(0, trio.current_time())
    await trio.testing.wait_all_tasks_blocked()
    await pods.frames(20)
    assert "t/q" in pods.relayed()
    stream = pods.remote._streams[0]
    sub.set_layer(2, trio.current_time())  # q unneeded from now (once the switch is made)
    await pods.frames(20)
    assert sub.forwarded_layer == 2
    now = trio.current_time()
    stream.unneeded_since = now - 60
    pods.remote._sync_streams(now)  # q released: its task is cancelled, not yet unwound
    sub.set_layer(0, now)  # ... and needed again at once
    await trio.sleep(0.2)
    await pods.frames(20)
    assert "t/q" in pods.relayed()
    assert sub.forwarded_layer == 0
    pods.check()
