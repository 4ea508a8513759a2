"""One publisher track fanned out to N subscribers on the pod's real forwarding path, without
signalling, ICE or DTLS: what ``bench/forward.py`` times and ``tests/test_gc_promotion.py``
counts the garbage-collector load of. One copy, so the figure and the count are of the same
path (bench modules import test helpers, as ``bench/relay.py`` does; not the other way)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from trio_sfu.proto.capabilities import URI_ABS_SEND_TIME, URI_MID, URI_TRANSPORT_CC
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtp import RtpPacket, TransportCcSequencer
from trio_sfu.proto.sdp.model import HeaderExtension, RtpCodec
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.path import Address
from trio_sfu.rtc.server import RtcServer
from trio_sfu.rtc.udp import UdpPath
from trio_sfu.sfu.track import DownTrack, PublishedTrack

PUB_SSRC = 0x11111111
#: The first payload bytes of a VP8 keyframe: descriptor S bit, frame tag, start code.
VP8_KEYFRAME = b"\x10\x00\x00\x00\x9d\x01\x2a"
FB = ["nack", "nack pli", "transport-cc"]


class PublisherLeg:
    """The publisher's side as the track sees it: keyframe requests and NACKs towards it go
    nowhere (not part of what is measured)."""

    name = "publisher"

    def send_rtcp(self, packet: bytes) -> None:
        pass


def transceiver(
    direction: str,
    ssrc: int,
    *,
    rtx: bool = True,
    cname: str = "t",
    publisher_ssrc: int = PUB_SSRC,
) -> Transceiver:
    """A negotiated VP8 video transceiver with RTX, NACK/PLI, transport-cc, MID and
    abs-send-time (the extension ids a browser offers); a receiving one expects
    ``publisher_ssrc``, a sending one sends RTX as ``ssrc + 1`` unless ``rtx`` is off."""
    return Transceiver(
        kind="video",
        direction=direction,  # type: ignore[arg-type]
        sender_ssrc=ssrc,
        sender_rtx_ssrc=ssrc + 1 if rtx else None,
        cname=cname,
        stream_id="s",
        track_id="t",
        current_direction=direction,  # type: ignore[arg-type]
        codecs=[
            RtpCodec(96, "VP8", 90000, rtcp_fb=list(FB)),
            RtpCodec(97, "rtx", 90000, fmtp="apt=96"),
        ],
        header_extensions=[
            HeaderExtension(4, URI_MID),
            HeaderExtension(3, URI_TRANSPORT_CC),
            HeaderExtension(2, URI_ABS_SEND_TIME),
        ],
        remote_ssrcs=[publisher_ssrc] if direction == "recvonly" else [],
    )


def packet(seq: int, payload: bytes) -> bytes:
    """The publisher's RTP packet ``seq``: 6 packets a frame, the extensions a browser sends."""
    return RtpPacket(
        96, seq & 0xFFFF, 3000 * (seq // 6), PUB_SSRC, marker=seq % 6 == 5,
        extensions={4: b"0", 3: (seq & 0xFFFF).to_bytes(2, "big"), 2: b"\x12\x34\x56"},
        payload=payload,
    ).serialize()  # fmt: skip


def _sequencer(sequencer: TransportCcSequencer, _extension_id: int) -> TransportCcSequencer:
    """Every subscriber numbers its own transport-cc sequence (one transport each)."""
    return sequencer


@dataclass
class Fanout:
    """The publisher's track, its incoming stream, and the subscribers' down-tracks."""

    track: PublishedTrack
    stream: IncomingStream
    downtracks: list[DownTrack] = field(default_factory=list)


def fan_out(
    server: RtcServer,
    dest: Address,
    subscribers: int,
    on_sent: Callable[[int], Callable[[int, int, float, int], None] | None] = lambda _i: None,
) -> Fanout:
    """One published track and ``subscribers`` server peers with SRTP keys (as DTLS would
    set) and a path to ``dest``, each with a down-track attached and held until a keyframe,
    as a real subscriber is. ``on_sent(i)`` is subscriber ``i``'s send hook (a bandwidth
    estimator's ``on_packet_sent``), or None."""
    receiving = transceiver("recvonly", 1)
    track = PublishedTrack(
        PublisherLeg(),  # type: ignore[arg-type]
        receiving,
        "t",
        publisher_id="pub",
    )
    result = Fanout(track, IncomingStream(PUB_SSRC, receiving))
    for i in range(subscribers):
        pc = server.create_peer(name=f"sub{i}")
        key = os.urandom(28)
        pc._srtp = SrtpContext("SRTP_AEAD_AES_128_GCM", key, key)  # as DTLS would
        pc.remote_address = dest
        pc.path = UdpPath(server.endpoint, dest)  # where a valid check would point
        sequencer = TransportCcSequencer(3)
        downtrack = DownTrack(
            pc,
            transceiver("sendonly", 0x1000 + 2 * i),
            track,
            twcc=partial(_sequencer, sequencer),
            on_sent=on_sent(i),
        )
        assert downtrack.activate()
        track.attach(downtrack)
        result.downtracks.append(downtrack)
    return result
