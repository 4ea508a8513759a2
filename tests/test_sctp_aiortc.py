"""Interop against aiortc's independent SCTP/DCEP implementation (RTCSctpTransport).

aiortc runs in asyncio over a fake DTLS transport; our DataChannelEndpoint is driven by a small
asyncio pump with the loop's clock. aiortc always initiates the association (RFC 8841 lets both
sides do so), so "aiortc only" and "both at once" (an INIT collision) are both exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport

from trio_sfu.proto.datachannel import (
    AssociationClosed,
    AssociationEstablished,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    DataChannelEndpoint,
)


class FakeDtls:
    """Just enough of RTCDtlsTransport for RTCSctpTransport."""

    state = "connected"

    def __init__(self, role: str, deliver: Callable[[bytes], None]) -> None:
        self._role = role
        self._deliver = deliver
        self.receiver: Any = None

    def _register_data_receiver(self, receiver: Any) -> None:
        self.receiver = receiver

    def _unregister_data_receiver(self, receiver: Any) -> None:
        self.receiver = None

    async def _send_data(self, data: bytes) -> None:
        self._deliver(data)


class Harness:
    def __init__(
        self, *, we_are_dtls_client: bool, loss: float = 0.0, seed: int = 0, **sctp: Any
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(seed)
        self.loss = loss
        self.ours = DataChannelEndpoint(
            is_dtls_client=we_are_dtls_client, remote_max_message_size=262144,
            rng=random.Random(seed).randbytes, **sctp,
        )
        self.events: list[Any] = []
        self.wake = asyncio.Event()
        self.dtls = FakeDtls("server" if we_are_dtls_client else "client", self._to_us)
        self.theirs = RTCSctpTransport(self.dtls)  # type: ignore[arg-type]
        self.their_channels: list[RTCDataChannel] = []
        self.their_messages: list[tuple[str, str | bytes]] = []
        self.theirs.on("datachannel", self._their_channel)
        self.task = asyncio.ensure_future(self._pump())

    @property
    def now(self) -> float:
        return self.loop.time()

    def _their_channel(self, dc: RTCDataChannel) -> None:
        self.their_channels.append(dc)
        dc.on("message", lambda m, dc=dc: self.their_messages.append((dc.label, m)))

    def _to_us(self, data: bytes) -> None:
        if self.rng.random() >= self.loss:
            self.ours.receive_packet(data, self.now)
        self.wake.set()

    async def _pump(self) -> None:
        ours = self.ours
        while True:
            self.wake.clear()
            t = ours.get_timer()
            if t is not None and self.now >= t:
                ours.handle_timer(self.now)
            for pkt in ours.packets_to_send(self.now):
                if self.rng.random() >= self.loss:
                    await self.theirs._handle_data(pkt)
            while (ev := ours.next_event()) is not None:
                self.events.append(ev)
            if self.wake.is_set():
                continue
            t = ours.get_timer()
            timeout = None if t is None else max(0.0, t - self.now)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def poke(self) -> None:
        self.wake.set()

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = self.now + timeout
        while not cond():
            if self.now > deadline:
                raise AssertionError("condition not met in time")
            self.poke()
            await asyncio.sleep(0.005)

    def of_type(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    async def start(self, *, we_connect: bool) -> None:
        if we_connect:
            self.ours.connect(self.now)
            self.poke()
        await self.theirs.start(RTCSctpCapabilities(maxMessageSize=262144), 5000)
        await self.until(lambda: bool(self.of_type(AssociationEstablished))
                         and self.theirs.state == "connected")

    async def close(self) -> None:
        await self.theirs.stop()
        self.task.cancel()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


@pytest.mark.parametrize("we_connect", [False, True], ids=["aiortc-inits", "both-init"])
@pytest.mark.parametrize("we_are_dtls_client", [False, True], ids=["we-server", "we-client"])
def test_channels_both_ways_with_aiortc(we_connect: bool, we_are_dtls_client: bool) -> None:
    async def scenario() -> None:
        h = Harness(we_are_dtls_client=we_are_dtls_client)
        await h.start(we_connect=we_connect)
        # aiortc opens a channel; we see DCEP OPEN, ACK it, and echo what arrives
        theirs = RTCDataChannel(h.theirs, RTCDataChannelParameters(label="from-aiortc",
                                                                   protocol="proto"))
        await h.until(lambda: bool(h.of_type(ChannelOpened)))
        opened = h.of_type(ChannelOpened)[0]
        assert (opened.label, opened.protocol, opened.locally_opened) == (
            "from-aiortc", "proto", False)
        assert opened.channel_id % 2 == (1 if we_are_dtls_client else 0)
        got: list[str | bytes] = []
        theirs.on("message", got.append)
        payloads: list[str | bytes] = ["text", b"\x00binary", "", b"", b"z" * 200000]
        for p in payloads:
            theirs.send(p)
        await h.until(lambda: len(h.of_type(ChannelMessage)) == len(payloads))
        assert [e.data for e in h.of_type(ChannelMessage)] == payloads
        for e in h.of_type(ChannelMessage):
            h.ours.send(e.channel_id, e.data, h.now)
        await h.until(lambda: len(got) == len(payloads))
        assert got == payloads
        # we open one; aiortc sees it with our settings
        cid = h.ours.open_channel("from-us", h.now, ordered=False, max_retransmits=2)
        assert cid % 2 == (0 if we_are_dtls_client else 1)
        await h.until(lambda: bool(h.their_channels))
        dc = h.their_channels[0]
        assert (dc.label, dc.ordered, dc.maxRetransmits, dc.id) == ("from-us", False, 2, cid)
        h.ours.send(cid, "hi aiortc", h.now)
        await h.until(lambda: ("from-us", "hi aiortc") in h.their_messages)
        # aiortc closes its channel: both ends see it closed
        theirs.close()
        await h.until(lambda: bool(h.of_type(ChannelClosed)) and theirs.readyState == "closed")
        assert h.of_type(ChannelClosed) == [ChannelClosed(opened.channel_id)]
        # we close ours
        h.ours.close_channel(cid, h.now)
        await h.until(lambda: len(h.of_type(ChannelClosed)) == 2 and dc.readyState == "closed")
        await h.close()
        await h.until(lambda: bool(h.of_type(AssociationClosed)))

    run(scenario)


def test_negotiated_channel_with_aiortc() -> None:
    async def scenario() -> None:
        h = Harness(we_are_dtls_client=False)
        await h.start(we_connect=False)
        dc = RTCDataChannel(h.theirs, RTCDataChannelParameters(label="n", negotiated=True,
                                                               id=10))
        h.ours.open_channel("n", h.now, negotiated=True, id=10)
        got: list[str | bytes] = []
        dc.on("message", got.append)
        h.ours.send(10, "ping", h.now)
        await h.until(lambda: got == ["ping"])
        dc.send("pong")
        await h.until(lambda: [e.data for e in h.of_type(ChannelMessage)] == ["pong"])
        await h.close()

    run(scenario)


def test_lossy_transfer_with_aiortc() -> None:
    """Retransmissions on both sides; aiortc's SACKs with gap blocks drive our sender."""

    async def scenario() -> None:
        # WebRTC-style timers on our side keep the wall-clock time of this test short.
        h = Harness(we_are_dtls_client=True, seed=3, rto_initial=0.2, rto_min=0.2, rto_max=3.0)
        await h.start(we_connect=True)
        h.loss = 0.1
        cid = h.ours.open_channel("bulk", h.now)
        await h.until(lambda: bool(h.their_channels), timeout=30)
        blobs = [bytes([i]) * (1 + 7919 * i % 30000) for i in range(20)]
        for b in blobs:
            h.ours.send(cid, b, h.now)
        await h.until(lambda: len(h.their_messages) == 20, timeout=50)
        assert [m for _, m in h.their_messages] == blobs
        assert h.ours.association.retransmissions > 0
        await h.close()

    run(scenario)


def test_our_shutdown_and_abort_reach_aiortc() -> None:
    async def scenario() -> None:
        h = Harness(we_are_dtls_client=False)
        await h.start(we_connect=False)
        h.ours.abort("bye")
        h.poke()
        await h.until(lambda: h.theirs.state == "closed")
        assert h.of_type(AssociationClosed)[0].aborted
        h.task.cancel()

    run(scenario)
