"""CPU cost per forwarded packet with the media stages, beside the floor measured in the same run.

One publisher's stream — VP8-like video (1200-byte packets with abs-send-time, transport-cc and
mid extensions) interleaved with Opus-like audio (120 bytes, audio level), three video packets
to one audio, roughly 1.5 Mbit/s beside 50 packets/s — fanned out to N subscribers inside one
process, as the UDP reader does it: per incoming packet the publisher-side stages (packet cache,
receive statistics, NACK tracking), then per subscriber ``RtpRewriter.rewrite``, send
statistics, its own pylibsrtp AEAD_AES_128_GCM ``protect`` and one raw non-blocking ``sendto``
to a loopback socket that is drained outside the timed region. Subscribers share nothing but
the socket; each has one transport-cc sequence for its two tracks.

Printed per N: CPU µs (``time.process_time``) per outbound packet with only
rewrite + protect + sendto ("bare") and with every stage ("full"), the stages' share, and the
ratio of "full" to the floor (``bench.floor.measure_floor``: protect + sendto of 1200 bytes)
measured in the same run. Nothing is asserted; packet counts and time are bounded.

Run from the repository root: ``.venv/bin/python -m bench.forward [outbound packets] [N ...]``
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import pylibsrtp

from bench.floor import MAX_SECONDS, Loopback, gcm_session, measure, measure_floor
from trio_sfu.proto.rtp import RtpPacket, RtpRewriter, TransportCcSequencer, payload_offset
from trio_sfu.sfu.media import NackGenerator, PacketCache, ReceiveStatistics, SendStatistics

INPUT = 512  # distinct publisher packets, replayed with fresh per-subscriber state each round
CHUNK = 256  # outbound packets between drains of the receiving socket
VIDEO_SSRC, AUDIO_SSRC = 0x11111111, 0x22222222


def publisher_packets() -> list[bytes]:
    out = []
    video_seq = audio_seq = 0
    for i in range(INPUT):
        if i % 4 == 3:
            out.append(
                RtpPacket(
                    111, 20000 + audio_seq, 960 * audio_seq, AUDIO_SSRC,
                    extensions={1: b"\x85", 3: (i & 0xFFFF).to_bytes(2, "big"), 4: b"0"},
                    payload=os.urandom(120),
                ).serialize()
            )
            audio_seq += 1
        else:
            out.append(
                RtpPacket(
                    96, 40000 + video_seq, 3000 * (video_seq // 6), VIDEO_SSRC,
                    marker=video_seq % 6 == 5,
                    extensions={2: b"\x12\x34\x56", 3: (i & 0xFFFF).to_bytes(2, "big"),
                                4: b"1"},
                    payload=os.urandom(1200),
                ).serialize()
            )
            video_seq += 1
    return out


@dataclass(slots=True)
class Subscriber:
    video: RtpRewriter
    audio: RtpRewriter
    video_stats: SendStatistics
    audio_stats: SendStatistics
    protect: Callable[[bytes], bytes]


def new_subscriber(n: int, session: pylibsrtp.Session) -> Subscriber:
    twcc = TransportCcSequencer(ext_id=5)
    return Subscriber(
        RtpRewriter(0xA0000000 + n, {96: 98}, {2: 3}, twcc=twcc, initial_sequence=1000),
        RtpRewriter(
            0xB0000000 + n, {111: 109}, {1: 1}, clock_rate=48000, twcc=twcc,
            initial_sequence=2000,
        ),
        SendStatistics(90000),
        SendStatistics(48000),
        session.protect,
    )


@dataclass(slots=True)
class Round:
    """What one replay of the input starts afresh: each subscriber's rewriters and send
    statistics (the sessions' replay windows cover a round) and the publisher-side stages."""

    video: list[tuple[RtpRewriter, SendStatistics, Callable[[bytes], bytes]]]
    audio: list[tuple[RtpRewriter, SendStatistics, Callable[[bytes], bytes]]]
    cache: PacketCache
    video_rx: ReceiveStatistics
    audio_rx: ReceiveStatistics
    nack: NackGenerator


def measure_fanout(fanout: int, total: int, packets: list[bytes], full: bool
                   ) -> tuple[float, int]:
    """(CPU µs per outbound packet, sends that hit a full socket buffer)."""
    sessions = [gcm_session(window_size=2 * INPUT) for _ in range(fanout)]
    per_chunk = max(1, CHUNK // fanout)
    offsets = [payload_offset(p) for p in packets]
    link = Loopback()

    def forward(r: Round, chunk: range) -> int:
        sendto, dest, monotonic = link.tx.sendto, link.dest, time.monotonic
        video, audio, cache, nack = r.video, r.audio, r.cache, r.nack
        video_rx, audio_rx = r.video_rx, r.audio_rx
        dropped = 0
        for i in chunk:
            packet = packets[i]
            is_video = packet[1] & 0x7F == 96
            if full:
                now = monotonic()
                seq = (packet[2] << 8) | packet[3]
                ts = int.from_bytes(packet[4:8])
                size = len(packet) - offsets[i]
                if is_video:
                    cache.put(packet)
                    video_rx.update(seq, ts, now)
                    nack.on_packet(seq, now)
                else:
                    audio_rx.update(seq, ts, now)
            for rewriter, stats, protect in video if is_video else audio:
                out = rewriter.rewrite(packet)
                if out is None:
                    continue
                if full:
                    stats.update(int.from_bytes(out[4:8]), size, now)
                try:
                    sendto(protect(out), dest)
                except BlockingIOError:
                    dropped += 1
        link.dropped += dropped
        return len(chunk) * fanout

    def rounds() -> Iterator[Callable[[], int]]:
        while True:
            subs = [new_subscriber(i, s) for i, s in enumerate(sessions)]
            r = Round(
                [(s.video, s.video_stats, s.protect) for s in subs],
                [(s.audio, s.audio_stats, s.protect) for s in subs],
                PacketCache(), ReceiveStatistics(90000), ReceiveStatistics(48000), NackGenerator(),
            )
            for start in range(0, len(packets), per_chunk):
                yield partial(forward, r, range(start, min(start + per_chunk, len(packets))))
                link.drain()  # outside the timed region, like the floor's

    try:
        cpu, _wall = measure(total, rounds())
    finally:
        link.close()
    return cpu, link.dropped


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    fanouts = [int(a) for a in sys.argv[2:]] or [1, 10, 50]
    packets = publisher_packets()
    gc.collect()
    gc.freeze()
    floor_cpu, _floor_wall = measure_floor()
    print(f"fan-out of one publisher (3 video : 1 audio), up to {total} outbound packets or "
          f"{MAX_SECONDS:.0f} s per figure; CPU µs per outbound packet")
    print(f"{'N':>4s} {'bare':>8s} {'full':>8s} {'stages':>8s} {'full/floor':>11s}")
    dropped = 0
    for fanout in fanouts:
        bare, d1 = measure_fanout(fanout, total, packets, full=False)
        full, d2 = measure_fanout(fanout, total, packets, full=True)
        dropped += d1 + d2
        print(f"{fanout:4d} {bare:8.2f} {full:8.2f} {full - bare:8.2f} {full / floor_cpu:10.2f}x")
    print(f"floor (protect GCM + sendto 1200 B, same run): {floor_cpu:.2f} µs CPU")
    if dropped:
        print(f"({dropped} sends hit a full socket buffer and were dropped)")


if __name__ == "__main__":
    main()
