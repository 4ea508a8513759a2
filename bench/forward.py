"""CPU per forwarded packet on the real forwarding path, in one process, beside the floor measured
in the same run.

The path is the pod's own from the publisher's track on: ``PublishedTrack.on_rtp`` (receive
statistics, NACK tracking, packet cache) → ``ForwardingGroup.forward`` (one ``RtpRewriter``
per group) → ``DownTrack.deliver`` → ``ServerPeerConnection.send_rtp_as`` (SSRC and
transport-cc number patched in, AEAD_AES_128_GCM protect) → ``UdpEndpoint.sendto`` → raw
``sendto`` to a loopback socket drained between batches outside the timed region. What it
leaves out is the ingress (recv + unprotect, a few µs per *incoming* packet) — ``bench.pod``
measures the whole pod end to end. The track and its subscribers are set up by
``tests/fanout_helpers.py``, the same setup ``tests/test_gc_promotion.py`` counts the
garbage-collector load of.

Per N subscribers, two figures: all subscribers negotiated the same mapping (one forwarding
group, the usual case), and every subscriber in a group of its own (what every packet cost
before issue 10: one rewrite per subscriber). Printed: CPU µs (``time.process_time``) per
outbound packet and the ratio to the floor (``bench.floor.measure_floor``: protect + sendto of
1200 bytes, same run). Nothing is asserted; packet counts and time are bounded.

Run from the repository root: ``.venv/bin/python -m bench.forward [outbound packets] [N ...]``
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator
from functools import partial

import trio

from bench.floor import Loopback, measure, measure_floor
from tests.fanout_helpers import VP8_KEYFRAME, Fanout, fan_out, packet
from trio_sfu.rtc.server import RtcServer

CHUNK = 256  # outbound packets between drains of the receiving socket


def keyframed_track(server: RtcServer, link: Loopback, fanout: int) -> Fanout:
    """``fanout`` subscribers of one publisher track, all in one forwarding group: each
    down-track is held until a keyframe, as a real subscriber's is, and the publisher's
    keyframe (RFC 7741 descriptor, RFC 6386 §9.1 start code) releases them together. Also
    ``bench.instructions``' set-up."""
    setup = fan_out(server, link.dest, fanout)
    setup.track.on_rtp(setup.stream, packet(0, VP8_KEYFRAME + bytes(1093)), trio.current_time())
    return setup


async def measure_fanout(fanout: int, total: int, shared: bool) -> float:
    """CPU µs per outbound packet for one publisher track fanned out to ``fanout``."""
    server = RtcServer.bind("127.0.0.1")
    link = Loopback()
    try:
        setup = keyframed_track(server, link, fanout)
        track, stream = setup.track, setup.stream
        if not shared:  # each subscriber in a group of its own
            for downtrack in setup.downtracks:
                track.fanout.split(downtrack)
        assert len(track.fanout.groups) == (1 if shared else fanout)
        payload = os.urandom(1100)
        per_chunk = max(1, CHUNK // fanout)
        seq = 1

        sent = 0

        def forward(packets: list[bytes]) -> int:
            nonlocal sent
            on_rtp = track.on_rtp
            now = trio.current_time()
            for rtp in packets:
                on_rtp(stream, rtp, now)
            sent += len(packets) * fanout
            return len(packets) * fanout

        def batches() -> Iterator[Callable[[], int]]:
            nonlocal seq
            while True:
                packets = [packet(seq + k, payload) for k in range(per_chunk)]
                seq += per_chunk
                yield partial(forward, packets)
                link.drain()  # outside the timed region, like the floor's

        cpu, _wall = measure(total, batches())
        link.drain()
        # The figure is only a forward if the datagrams left (a peer without a path sends
        # nothing, and that is cheaper than the floor).
        if link.received < 0.9 * sent:
            raise RuntimeError(f"only {link.received} of {sent} forwarded datagrams arrived")
        return cpu
    finally:
        link.close()
        server.close()


async def main_async(total: int, fanouts: list[int]) -> None:
    floor_cpu, _ = measure_floor()
    print(
        f"one VP8-shaped track (1100-byte payloads) on the real forwarding path, up to {total} "
        "outbound packets per figure; CPU µs per outbound packet"
    )
    print(f"{'N':>4s} {'1 group':>9s} {'N groups':>9s} {'1 group/floor':>14s}")
    for fanout in fanouts:
        one = await measure_fanout(fanout, total, shared=True)
        many = await measure_fanout(fanout, total, shared=False)
        print(f"{fanout:4d} {one:9.2f} {many:9.2f} {one / floor_cpu:13.2f}x")
    print(f"floor (protect GCM + sendto 1200 B, same run): {floor_cpu:.2f} µs CPU")


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    fanouts = [int(a) for a in sys.argv[2:]] or [1, 10, 50, 100]
    gc.collect()
    gc.freeze()
    trio.run(main_async, total, fanouts)


if __name__ == "__main__":
    main()
