"""The NATS media relay: pod A's packets reach pod B once, in order, batched, only when wanted.

Two NatsBus instances in one process stand for two pods over a real nats-server; the relay has
no other path between them.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import msgpack
import pytest
import trio
import trio.testing

from tests.aio.test_nats_bus import FAIL_FAST, RESUME, pods
from tests.services import NatsServer, nats_server
from tests.task_steps import TaskSteps
from trio_sfu.cluster import nats_bus
from trio_sfu.cluster.aio import BackendUnavailable, open_asyncio
from trio_sfu.cluster.framing import MAX_PACKET, MEDIA_VERSION, pack_packets, unpack_packets
from trio_sfu.cluster.nats_bus import NatsBus
from trio_sfu.cluster.relay import QUEUE_LIMIT, RELEASE, WANT, MediaRelay


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


def quick_leases(bus: NatsBus) -> None:
    """Leases of half a second renewed every 0.1 s, so expiry shows within a test."""
    bus.relay.want_ttl = 0.5
    bus.relay.want_interval = 0.1


def rtp_like(index: int, size: int = 1100) -> bytes:
    """A packet that names its index, padded to a realistic video packet size."""
    return index.to_bytes(4, "big") + bytes(size - 4)


class Collector:
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.times: list[float] = []

    def __call__(self, packet: bytes, now: float) -> None:
        self.packets.append(packet)
        self.times.append(now)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while len(self.packets) < count:
                await trio.sleep(0.01)


async def until_wanted(bus: NatsBus, publisher: str, track: str, value: bool = True) -> None:
    with trio.fail_after(FAIL_FAST):
        while bus.relay.wanted(publisher, track) != value:
            await trio.sleep(0.01)


async def send_bursts(send: object, first: int, count: int, burst: int = 8) -> None:
    """Like a UDP reader: a burst of packets per wake-up, then other tasks run."""
    assert callable(send)
    for i in range(first, first + count):
        send(rtp_like(i))
        if i % burst == burst - 1:
            await trio.sleep(0)


# -- framing -----------------------------------------------------------------------------------


def test_framing_packs_what_fits_and_keeps_order() -> None:
    queue = deque(rtp_like(i, 1000) for i in range(10))
    message, count, dropped = pack_packets(queue, limit=3100)
    assert (count, dropped) == (3, 0)
    assert message[0] == MEDIA_VERSION
    assert unpack_packets(message) == [rtp_like(i, 1000) for i in range(3)]
    assert len(queue) == 7


def test_framing_drops_packets_that_cannot_be_rtp() -> None:
    queue = deque([bytes(MAX_PACKET + 1), b"ok"])
    message, count, dropped = pack_packets(queue)
    assert (count, dropped) == (1, 1)
    assert unpack_packets(message) == [b"ok"]


@pytest.mark.parametrize("message", [b"", b"\x02\x00\x01x", b"\x01\x00", b"\x01\x00\x05abc"])
def test_framing_refuses_malformed_messages(message: bytes) -> None:
    with pytest.raises(ValueError):
        unpack_packets(message)


# -- two pods ----------------------------------------------------------------------------------


async def test_ten_thousand_packets_in_order_once_and_batched(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        send = a.relay.sender("alice-1", "video-1")
        # Sync: nothing to await, so nothing can cross into asyncio per packet.
        assert not inspect.iscoroutinefunction(type(send).__call__)
        got = Collector()
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", got):
            await until_wanted(a, "alice-1", "video-1")
            total = 10_000
            await send_bursts(send, 0, total)
            await got.wait_for(total)
            await trio.sleep(0.1)  # anything extra (a duplicate) would arrive meanwhile
        assert got.packets == [rtp_like(i) for i in range(total)]
        assert a.relay.counters.packets_sent == total
        assert b.relay.counters.packets_received == total
        assert a.relay.counters.dropped == 0
        # Several packets per NATS message: the pump took what queued while it was busy.
        assert b.relay.counters.messages_received == a.relay.counters.messages_sent
        assert a.relay.counters.messages_sent < total
        # Handed over message by message from the NATS callback, stamped with Trio's clock.
        assert all(t <= trio.current_time() for t in got.times)


async def test_nothing_is_published_until_another_pod_wants_the_track(
    nats: NatsServer,
) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        send = a.relay.sender("alice-1", "audio-1")
        assert not a.relay.wanted("alice-1", "audio-1")
        await send_bursts(send, 0, 100)
        await trio.sleep(0.1)
        assert a.relay.counters.messages_sent == 0
        got = Collector()
        async with b.relay.subscribe("pod-a", "alice-1", "audio-1", got):
            await until_wanted(a, "alice-1", "audio-1")
            await send_bursts(send, 100, 50)
            await got.wait_for(50)
        # Leaving the block releases the want at once: the publisher's pod stops publishing.
        await until_wanted(a, "alice-1", "audio-1", False)
        sent = a.relay.counters.packets_sent
        await send_bursts(send, 150, 100)
        await trio.sleep(0.1)
        assert a.relay.counters.packets_sent == sent
        assert got.packets == [rtp_like(i) for i in range(100, 150)]


async def test_a_vanished_pods_want_expires(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b", setup=quick_leases) as (a, b):
        # pod-b says it wants the track once and then never again (as if SIGKILLed).
        want = bytes((MEDIA_VERSION,)) + msgpack.packb([WANT, "pod-b", [["alice-1", "video-1"]]])
        await b.publish_raw(b.subject("want", "pod-a"), want)
        send = a.relay.sender("alice-1", "video-1")
        await until_wanted(a, "alice-1", "video-1")
        assert send.wanted
        # The relay's own sweep lets the lease lapse; nobody has to ask.
        with trio.fail_after(FAIL_FAST):
            while send.wanted:
                await trio.sleep(0.01)
        assert not a.relay.wanted("alice-1", "video-1")


async def test_a_live_subscription_keeps_its_want(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b", setup=quick_leases) as (a, b):
        got = Collector()
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", got):
            await until_wanted(a, "alice-1", "video-1")
            for _ in range(10):  # 2 s: four TTLs, each renewed by B's refreshes
                await trio.sleep(0.2)
                assert a.relay.wanted("alice-1", "video-1")


async def test_a_relay_with_nothing_to_renew_or_expire_does_not_wake(nats: NatsServer) -> None:
    """A pod that relays nothing (no subscription, no want) never wakes its refresh loop: a
    wake-up a second was a measurable share of an idle pod's CPU. A subscription starts the
    renewals; once it is released, both pods' loops go back to sleep."""
    refresh = "MediaRelay._refresh_wants"
    steps = TaskSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        async with pods(nats.url, "pod-a", "pod-b", setup=quick_leases) as (a, b):
            await trio.sleep(0.5)  # five want intervals
            assert steps.of(refresh) == 2  # each pod's loop started and sleeps
            got = Collector()
            async with b.relay.subscribe("pod-a", "alice-1", "video-1", got):
                await until_wanted(a, "alice-1", "video-1")
                before = steps.of(refresh)
                await trio.sleep(0.5)
                assert steps.of(refresh) >= before + 4  # B renews, A expires, each interval
                assert a.relay.wanted("alice-1", "video-1")
            await until_wanted(a, "alice-1", "video-1", False)  # released at once
            with trio.fail_after(FAIL_FAST):  # one more round each, then asleep
                while True:
                    settled = steps.of(refresh)
                    await trio.sleep(0.3)
                    if steps.of(refresh) == settled:
                        break
            await trio.sleep(0.5)
            assert steps.of(refresh) == settled
    finally:
        trio.lowlevel.remove_instrument(steps)


async def test_malformed_wants_are_ignored(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        subject = b.subject("want", "pod-a")
        for junk in (b"", b"\x07", b"\x01\x93\x01\xa1b\x91\x92\x01\x02", b"\x01garbage"):
            await b.publish_raw(subject, junk)
        release = bytes((MEDIA_VERSION,)) + msgpack.packb(
            [RELEASE, "pod-b", [["alice-1", "video-1"]]]
        )
        await b.publish_raw(subject, release)
        with trio.fail_after(FAIL_FAST):
            while a.relay.counters.malformed < 4:
                await trio.sleep(0.01)
        assert not a.relay.wanted("alice-1", "video-1")


async def test_one_subscription_per_track_and_tracks_stay_apart(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        audio, video = Collector(), Collector()
        base = b.subscriptions
        async with (
            b.relay.subscribe("pod-a", "alice-1", "audio", audio),
            b.relay.subscribe("pod-a", "alice-1", "video", video),
        ):
            assert b.subscriptions == base + 2
            assert b.relay.counters.subscriptions == 2
            with pytest.raises(ValueError):
                async with b.relay.subscribe("pod-a", "alice-1", "video", Collector()):
                    pass
            assert b.subscriptions == base + 2
            await until_wanted(a, "alice-1", "audio")
            await until_wanted(a, "alice-1", "video")
            send_audio = a.relay.sender("alice-1", "audio")
            send_video = a.relay.sender("alice-1", "video")
            assert a.relay.sender("alice-1", "audio") is send_audio
            for i in range(200):
                send_audio(rtp_like(i, 100))
                send_video(rtp_like(i + 1000))
                if i % 5 == 0:
                    await trio.sleep(0)
            await audio.wait_for(200)
            await video.wait_for(200)
            assert audio.packets == [rtp_like(i, 100) for i in range(200)]
            assert video.packets == [rtp_like(i + 1000) for i in range(200)]
        assert b.subscriptions == base
        assert b.relay.counters.subscriptions == 0


async def test_a_closed_sender_stops_relaying(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        got = Collector()
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", got):
            await until_wanted(a, "alice-1", "video-1")
            send = a.relay.sender("alice-1", "video-1")
            await send_bursts(send, 0, 20)
            await got.wait_for(20)
            send.close()
            send.close()
            await send_bursts(send, 20, 20)
            await trio.sleep(0.1)
            assert len(got.packets) == 20
            # A new publication of the same track gets a fresh sender, still wanted.
            again = a.relay.sender("alice-1", "video-1")
            assert again is not send and again.wanted
            await send_bursts(again, 40, 20)
            await got.wait_for(40)
            assert got.packets[20:] == [rtp_like(i) for i in range(40, 60)]


async def test_a_failing_handler_does_not_stop_other_tracks(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        good = Collector()

        def broken(packet: bytes, now: float) -> None:
            raise RuntimeError("handler bug")

        async with (
            b.relay.subscribe("pod-a", "alice-1", "bad", broken),
            b.relay.subscribe("pod-a", "alice-1", "good", good),
        ):
            await until_wanted(a, "alice-1", "bad")
            await until_wanted(a, "alice-1", "good")
            bad_send, good_send = (
                a.relay.sender("alice-1", "bad"),
                a.relay.sender("alice-1", "good"),
            )
            for i in range(50):
                bad_send(rtp_like(i))
                good_send(rtp_like(i))
                await trio.sleep(0)
            await good.wait_for(50)
            assert good.packets == [rtp_like(i) for i in range(50)]


async def test_nats_down_the_sender_drops_counts_and_never_blocks(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        got = Collector()
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", got):
            await until_wanted(a, "alice-1", "video-1")
            send = a.relay.sender("alice-1", "video-1")
            await trio.to_thread.run_sync(nats.stop)
            with trio.fail_after(FAIL_FAST):
                while a.connected:
                    await trio.sleep(0.01)
            # Thousands of packets with no checkpoint: each call returns at once, and the
            # queue stays bounded however long NATS is away.
            for i in range(5000):
                send(rtp_like(i))
            assert len(send.queue) <= QUEUE_LIMIT
            assert a.relay.counters.dropped >= 5000 - QUEUE_LIMIT
            await trio.sleep(0.05)  # the pump runs, finds NATS down, discards the rest
            assert len(send.queue) == 0
            assert a.relay.counters.dropped == 5000
            assert a.relay.counters.packets_sent == 0


async def test_relay_resumes_after_a_nats_restart(nats: NatsServer) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        got = Collector()
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", got):
            await until_wanted(a, "alice-1", "video-1")
            send = a.relay.sender("alice-1", "video-1")
            await send_bursts(send, 0, 100)
            await got.wait_for(100)
            await trio.to_thread.run_sync(nats.restart)
            # Nobody re-subscribes: nats-py replays the subscription, the want is refreshed.
            index = 100
            with trio.fail_after(RESUME):
                while len(got.packets) <= 100:
                    send(rtp_like(index))
                    index += 1
                    await trio.sleep(0.01)
            after = got.packets[100:]
            first = int.from_bytes(after[0][:4], "big")
            await got.wait_for(100 + index - first)
            assert after == [rtp_like(i) for i in range(first, index)]


async def test_subscribe_needs_nats_and_a_running_bus(nats: NatsServer) -> None:
    idle = NatsBus(nats.url, "idle")
    with pytest.raises(RuntimeError):
        async with idle.relay.subscribe("pod-a", "p", "t", Collector()):
            pass
    async with pods(nats.url, "pod-b") as (b,):
        await trio.to_thread.run_sync(nats.stop)
        with trio.fail_after(FAIL_FAST):
            while b.connected:
                await trio.sleep(0.01)
        with trio.fail_after(FAIL_FAST), pytest.raises(BackendUnavailable):
            async with b.relay.subscribe("pod-a", "p", "t", Collector()):
                pass
        assert b.relay.counters.subscriptions == 0


# -- hops per message (issue 10: the relay's cost is per NATS message) -------------------------


class FakeLink:
    """A RelayLink without NATS: records publishes, hands out the subscription callbacks."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[bytes], None]] = {}
        self.published: list[tuple[str, bytes]] = []
        self.raw: list[tuple[str, bytes]] = []

    def subject(self, kind: str, *names: str) -> str:
        return ".".join(("t", kind, *names))

    @asynccontextmanager
    async def subscription(
        self, subject: str, on_message: Callable[[bytes], None], *, require_connected: bool = True
    ) -> AsyncIterator[None]:
        self.handlers[subject] = on_message
        try:
            yield
        finally:
            del self.handlers[subject]

    async def publish_raw(self, subject: str, data: bytes) -> None:
        self.raw.append((subject, data))

    def publish_now(self, subject: str, data: bytes) -> bool:
        self.published.append((subject, data))
        return True


@asynccontextmanager
async def fake_pod(node: str) -> AsyncIterator[tuple[MediaRelay, FakeLink]]:
    link = FakeLink()
    relay = MediaRelay(link, node)
    async with open_asyncio(), trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        yield relay, link
        nursery.cancel_scope.cancel()


async def test_a_received_message_is_forwarded_inside_the_nats_callback() -> None:
    async with fake_pod("pod-b") as (relay, link):
        got = Collector()
        async with relay.subscribe("pod-a", "alice-1", "video-1", got):
            on_message = link.handlers["t.media.pod-a.alice-1.video-1"]
            packets = deque([rtp_like(0), rtp_like(1), rtp_like(2)])
            message, _, _ = pack_packets(packets)
            # No queue and no Trio task in between: forwarded before the callback returns.
            on_message(message)
            assert got.packets == [rtp_like(0), rtp_like(1), rtp_like(2)]
            assert len(set(got.times)) == 1  # one stamp of Trio's clock per message
            on_message(b"\x63junk")
            assert relay.counters.malformed == 1
            assert relay.counters.messages_received == 1
        # A message nats-py still delivers after the block is ignored.
        on_message(message)
        assert len(got.packets) == 3


async def test_a_burst_leaves_as_one_message_once_the_step_is_over() -> None:
    async with fake_pod("pod-a") as (relay, link):
        relay._on_want(bytes((MEDIA_VERSION,)) + msgpack.packb([WANT, "pod-b", [["p", "t"]]]))
        send = relay.sender("p", "t")
        for i in range(10):  # one UDP reader pass: ten packets, no checkpoint
            send(rtp_like(i))
        assert link.published == []  # nothing leaves in the middle of the burst
        await trio.testing.wait_all_tasks_blocked()
        assert [subject for subject, _ in link.published] == ["t.media.pod-a.p.t"]
        assert unpack_packets(link.published[0][1]) == [rtp_like(i) for i in range(10)]
        send(rtp_like(10))
        await trio.testing.wait_all_tasks_blocked()
        assert len(link.published) == 2
        assert unpack_packets(link.published[1][1]) == [rtp_like(10)]
        assert relay.counters.messages_sent == 2
        assert relay.counters.packets_sent == 11


async def test_the_relay_publish_never_waits_and_drops_when_nats_lags(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pods(nats.url, "pod-a", "pod-b") as (a, b):
        got: list[bytes] = []
        async with b.subscription(b.subject("room", "r"), got.append):
            # Sync, called from Trio: queued in nats-py's buffer, its flusher sends it.
            assert a.publish_now(a.subject("room", "r"), b"one") is True
            with trio.fail_after(FAIL_FAST):
                while not got:
                    await trio.sleep(0.01)
            assert got == [b"one"]
            # An outbound buffer at the relay's limit: refused, not queued.
            monkeypatch.setattr(nats_bus, "MEDIA_PENDING_LIMIT", 2)
            assert a.publish_now(a.subject("room", "r"), b"two") is False
            monkeypatch.undo()
            assert a.publish_now(a.subject("room", "r"), b"three") is True
            with trio.fail_after(FAIL_FAST):
                while len(got) < 2:
                    await trio.sleep(0.01)
            assert got == [b"one", b"three"]
