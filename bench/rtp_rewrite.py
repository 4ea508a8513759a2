"""CPU cost per packet of the forwarding hot path, beside the floor measured in the same run.

The floor (``bench.floor.measure_floor``) is what every forwarded packet costs no matter how
good our Python is: a raw non-blocking ``sendto`` of 1200 bytes to a drained UDP socket on
127.0.0.1 plus one pylibsrtp ``protect`` (AEAD_AES_128_GCM). Each figure is printed in
microseconds of CPU time (``time.process_time``) and wall time (``time.perf_counter``), with its
ratio to the floor; DESIGN.md tracks that ratio. Nothing is asserted. Counts and time are
bounded.

Run from the repository root: ``.venv/bin/python -m bench.rtp_rewrite [packets]``
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from itertools import repeat

import pylibsrtp

from bench.floor import MAX_SECONDS, Loopback, gcm_session, measure, measure_floor, srtp_session
from trio_sfu.proto.rtp import RtpPacket, RtpRewriter, TransportCcSequencer, read_header

BATCH = 512  # distinct packets per batch: fits in cache like a burst from the socket would


def make_packets(count: int) -> list[bytes]:
    """A video packet as Chromium sends it: abs-send-time, transport-cc and mid extensions."""
    return [
        RtpPacket(
            payload_type=96,
            sequence_number=(40000 + i) & 0xFFFF,
            timestamp=90000 + (i // 8) * 3000,
            ssrc=0x11223344,
            marker=i % 8 == 7,
            extensions={2: b"\x12\x34\x56", 3: (i & 0xFFFF).to_bytes(2, "big"), 4: b"0"},
            payload=os.urandom(1200),
        ).serialize()
        for i in range(count)
    ]


def row(name: str, total: int, run_batch: Callable[[], int]) -> tuple[str, float, float]:
    """Time ``run_batch`` (returns packets done) over and over, up to ``total`` packets."""
    return name, *measure(total, repeat(run_batch))


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    packets = make_packets(BATCH)
    twcc = TransportCcSequencer(ext_id=3)

    def new_rewriter() -> RtpRewriter:
        return RtpRewriter(0xCAFEBABE, {96: 100}, {2: 2}, twcc=twcc, initial_sequence=1000)

    def fresh_outputs() -> list[bytes]:
        rw = new_rewriter()
        return [out for p in packets if (out := rw.rewrite(p)) is not None]

    outputs = fresh_outputs()  # every packet, unless a rewriter change drops some
    # Every batch re-sends the same sequence numbers through one session.
    gcm = gcm_session(window_size=2 * BATCH)
    cm = srtp_session(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, window_size=2 * BATCH)
    link = Loopback()

    def batch_parse() -> int:
        for p in packets:
            read_header(p)
        return BATCH

    def batch_rewrite() -> int:
        rw = new_rewriter()
        rewrite = rw.rewrite
        for p in packets:
            rewrite(p)
        return BATCH

    def batch_protect(session: pylibsrtp.Session) -> Callable[[], int]:
        def run() -> int:
            protect = session.protect
            for out in outputs:
                protect(out)
            return len(outputs)

        return run

    def batch_rewrite_protect() -> int:
        rw = new_rewriter()
        rewrite, protect = rw.rewrite, gcm.protect
        for p in packets:
            out = rewrite(p)
            if out is not None:
                protect(out)
        return BATCH

    def batch_sendto() -> int:
        protected = [gcm.protect(o) for o in outputs[:64]]
        for _ in range(BATCH // 64):
            link.send_all(protected)
            link.drain()
        return BATCH

    floor_cpu, floor_wall = measure_floor(total)
    rows = [
        row("parse header fields (read_header)", total, batch_parse),
        row("RtpRewriter.rewrite, 1200 B, 3 extensions", total, batch_rewrite),
        row("pylibsrtp protect AEAD_AES_128_GCM", total, batch_protect(gcm)),
        row("pylibsrtp protect AES_CM_128_HMAC_SHA1_80", total, batch_protect(cm)),
        row("rewrite + protect (GCM)", total, batch_rewrite_protect),
        # The drain's recv_into calls land inside this figure, as they would on a real server
        # reading its socket; they cost ≈ 1 µs, measured in DESIGN.md.
        row("raw sendto 1200 B (+ drain)", total, batch_sendto),
        ("floor: protect (GCM) + sendto 1200 B", floor_cpu, floor_wall),
    ]
    link.close()
    print(f"per-packet cost, up to {total} packets or {MAX_SECONDS:.0f} s per figure")
    print(f"{'':44s} {'CPU µs':>8s} {'wall µs':>8s} {'CPU/floor':>10s}")
    for name, cpu, wall in rows:
        print(f"{name:44s} {cpu:8.2f} {wall:8.2f} {cpu / floor_cpu:9.2f}x")
    if link.dropped:
        print(f"({link.dropped} sends hit a full socket buffer and were dropped)")


if __name__ == "__main__":
    main()
