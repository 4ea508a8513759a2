"""A live single-node SFU on loopback, and our Python clients joined to it in-process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import trio

from tests.rtc_helpers import client_certificate
from trio_sfu.client.sfu import PublisherClient, SubscriberClient
from trio_sfu.proto.capabilities import URI_TRANSPORT_CC
from trio_sfu.proto.rtp import find_extension
from trio_sfu.proto.twcc import TwccRecorder
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import RtcServer
from trio_sfu.sfu.service import Sfu


@dataclass
class SfuEnv:
    server: RtcServer
    sfu: Sfu
    nursery: trio.Nursery

    @property
    def client_options(self) -> dict[str, Any]:
        # Clients must check consent well within the server's timeout (RFC 7675 §5.1).
        return {
            "certificate": client_certificate(),
            "consent_interval": min(5.0, self.server.consent_timeout / 5),
        }

    async def subscriber(self, room: str, peer_id: str, **options: Any) -> SubscriberClient:
        client = SubscriberClient(peer_id, **self.client_options, **options)
        await self.nursery.start(
            client.connect, functools.partial(self.sfu.subscribe, room, peer_id)
        )
        await client.wait_open()
        return client

    async def publisher(self, room: str, peer_id: str, **options: Any) -> PublisherClient:
        client = PublisherClient(peer_id, **self.client_options, **options)
        await self.nursery.start(client.connect, functools.partial(self.sfu.publish, room, peer_id))
        await client.wait_open()
        return client


    def forwarding(self, room: str, subscriber_id: str, publisher_id: str) -> bool:
        """The server side applied the subscriber's answer: ``publisher_id`` is forwarded
        (a video down-track from its source's next keyframe on: it may still wait for one)."""
        sub = self.sfu.rooms.get(room) and self.sfu.rooms[room].subscribers.get(subscriber_id)
        if not sub:
            return False
        tracks = [d for (p, _), d in sub.downtracks.items() if p == publisher_id]
        return bool(tracks) and all(sub.live.get(d.transceiver.sender_ssrc) is d for d in tracks)


async def start_sfu(nursery: trio.Nursery, *, consent_timeout: float = 30.0) -> SfuEnv:
    server = RtcServer.bind("127.0.0.1", 0, consent_timeout=consent_timeout)
    nursery.start_soon(server.serve)
    sfu = Sfu(server)
    await nursery.start(sfu.run)
    return SfuEnv(server, sfu, nursery)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll a condition the test cannot await directly (bounded)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def record_transport_cc(subscriber: SubscriberClient) -> TwccRecorder:
    """Record the transport-wide sequence numbers of the video ``subscriber`` receives, beside
    its own RTP handling, so a test can send the SFU transport-cc feedback as a browser would."""
    video = next(t for t in subscriber.pc.transceivers if t.kind == "video" and t.receiving)
    assert video.transport_cc
    ext_id = video.extension_id(URI_TRANSPORT_CC)
    assert ext_id is not None
    recorder = TwccRecorder()
    inner = subscriber.pc.on_rtp

    def on_rtp(stream: IncomingStream, packet: bytes, now: float) -> None:
        value = find_extension(packet, ext_id)
        if value is not None:
            recorder.record((value[0] << 8) | value[1], now)
        if inner is not None:
            inner(stream, packet, now)

    subscriber.pc.on_rtp = on_rtp
    return recorder
