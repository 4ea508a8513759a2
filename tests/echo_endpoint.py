"""A test endpoint built on the stack: echoes data channel messages and media back.

Used against Chromium, aiortc and our own client. It is deliberately a tiny SFU: it answers the
offer with every media section sendrecv, sends each received RTP stream back under its own
sending SSRC (RTX under its RTX SSRC), and translates the remote's PLI/FIR/NACK about the echoed
stream into the same feedback about the original one — so a browser decodes the echo exactly as
it would decode another participant's video.
"""

from __future__ import annotations

import trio

from trio_sfu.proto.rtcp import Fir, FirEntry, Nack, Pli, RtcpPacket
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import RtcServer, ServerPeerConnection


class EchoEndpoint:
    def __init__(self, server: RtcServer, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        self.peers: list[ServerPeerConnection] = []
        self.echoed_messages = 0
        self.echoed_rtp = 0

    async def answer(self, offer: str, name: str = "echo") -> str:
        pc = self.server.create_peer(name, new_transceiver_direction="sendrecv")
        answer = pc.handle_offer(offer)
        pc.on_rtp = lambda stream, packet, now: self._echo_rtp(pc, stream, packet)
        pc.on_rtcp = lambda packets, now: self._echo_rtcp(pc, packets)
        self.peers.append(pc)
        await self.nursery.start(self._run, pc)
        return answer

    async def _run(self, pc: ServerPeerConnection, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(pc.run)
            task_status.started()
            async for event in pc.events:
                if (
                    isinstance(event, ev.DataChannelMessage)
                    and event.channel.ready_state == "open"
                ):
                    event.channel.send(event.data)
                    self.echoed_messages += 1
        self.peers.remove(pc)

    def _echo_rtp(self, pc: ServerPeerConnection, stream: IncomingStream, packet: bytes) -> None:
        t = stream.transceiver
        codec = t.codec(packet[1] & 0x7F)
        is_rtx = stream.repairs is not None or (codec is not None and codec.is_rtx)
        ssrc = (t.sender_rtx_ssrc or t.sender_ssrc) if is_rtx else t.sender_ssrc
        out = bytearray(packet)
        out[8:12] = ssrc.to_bytes(4, "big")
        self.echoed_rtp += 1
        pc.send_rtp(bytes(out))

    def _original_ssrc(self, pc: ServerPeerConnection, our_ssrc: int) -> int | None:
        for stream in pc.incoming_streams:
            if stream.transceiver.sender_ssrc == our_ssrc and stream.repairs is None:
                return stream.ssrc
        return None

    def _echo_rtcp(self, pc: ServerPeerConnection, packets: list[RtcpPacket]) -> None:
        for p in packets:
            if isinstance(p, Pli):
                original = self._original_ssrc(pc, p.media_ssrc)
                if original is not None:
                    pc.send_rtcp(Pli(sender_ssrc=1, media_ssrc=original).serialize())
            elif isinstance(p, Fir):
                for entry in p.entries:
                    original = self._original_ssrc(pc, entry.ssrc)
                    if original is not None:
                        fir = Fir(sender_ssrc=1, entries=[FirEntry(original, entry.sequence)])
                        pc.send_rtcp(fir.serialize())
            elif isinstance(p, Nack):
                original = self._original_ssrc(pc, p.media_ssrc)
                if original is not None:
                    nack = Nack.from_lost(1, original, p.lost)
                    pc.send_rtcp(nack.serialize())
