"""Helpers for tests that run our client against our server on loopback."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import trio

from trio_sfu.client import ClientPeerConnection
from trio_sfu.proto.dtls import Certificate
from trio_sfu.proto.rtp import RtpPacket
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import RtcServer, ServerPeerConnection

_CLIENT_CERT: Certificate | None = None


def client_certificate() -> Certificate:
    """One certificate for every test client: generating one per connection is not the point."""
    global _CLIENT_CERT
    if _CLIENT_CERT is None:
        _CLIENT_CERT = Certificate.generate()
    return _CLIENT_CERT


@dataclass
class Received:
    """What one side's RTP callback saw."""

    packets: list[tuple[int, int]] = field(default_factory=list)  # (ssrc, seq)
    payloads: list[bytes] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)
    want: int = 0

    def __call__(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        self.packets.append((stream.ssrc, int.from_bytes(packet[2:4], "big")))
        self.payloads.append(packet)
        if self.want and len(self.packets) >= self.want:
            self.arrived.set()


def rtp(ssrc: int, seq: int, payload: bytes = b"\x90\x80" + bytes(100), pt: int = 96) -> bytes:
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq & 0xFFFF,
        timestamp=(seq * 3000) & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
    ).serialize()


async def echo_events(pc: ServerPeerConnection | ClientPeerConnection) -> None:
    """Echo every data channel message back on its channel (the server side of the tests)."""
    async for event in pc.events:
        if isinstance(event, ev.DataChannelMessage) and event.channel.ready_state == "open":
            event.channel.send(event.data)


def echo_rtp(pc: ServerPeerConnection) -> None:
    """Send each received RTP packet back under the transceiver's own sending SSRC."""

    def on_rtp(stream: IncomingStream, packet: bytes, now: float) -> None:
        out = bytearray(packet)
        out[8:12] = stream.transceiver.sender_ssrc.to_bytes(4, "big")
        pc.send_rtp(bytes(out))

    pc.on_rtp = on_rtp


async def connect(
    server: RtcServer,
    nursery: trio.Nursery,
    client: ClientPeerConnection,
    *,
    server_direction: str = "sendrecv",
    echo: bool = True,
    server_nursery: trio.Nursery | None = None,
) -> ServerPeerConnection:
    """Signal ``client`` to a new server peer (one offer/answer), run both, wait for DTLS."""
    spc = server.create_peer("test-server-peer", new_transceiver_direction=server_direction)
    answer = spc.handle_offer(client.create_offer())
    client.handle_answer(answer)
    await (server_nursery or nursery).start(spc.run)
    if echo:
        spc.start_soon(echo_events, spc)
        echo_rtp(spc)
    await nursery.start(client.run)
    with trio.fail_after(10):
        await client.wait_connected()
        await spc.wait_connected()
    return spc


def new_client(**options: object) -> ClientPeerConnection:
    return ClientPeerConnection(certificate=client_certificate(), **options)  # type: ignore[arg-type]


def live_srtp_contexts() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, SrtpContext))


async def next_event(pc: ServerPeerConnection | ClientPeerConnection, kind: type) -> object:
    with trio.fail_after(10):
        async for event in pc.events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"{pc} closed before {kind.__name__}")
