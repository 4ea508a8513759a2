"""CPU cost per packet of the forwarding hot path, beside the floor measured in the same run.

The floor is what every forwarded packet costs no matter how good our Python is: a raw
non-blocking ``sendto`` of 1200 bytes to a drained UDP socket on 127.0.0.1 plus one pylibsrtp
``protect`` (AEAD_AES_128_GCM). Each figure is printed in microseconds of CPU time
(``time.process_time``) and wall time (``time.perf_counter``), with its ratio to the floor;
DESIGN.md tracks that ratio. Nothing is asserted. Counts and time are bounded.

Run: ``.venv/bin/python bench/rtp_rewrite.py [packets]``
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

import pylibsrtp

from trio_sfu.proto.rtp import RtpPacket, RtpRewriter, TransportCcSequencer, read_header

BATCH = 512  # distinct packets per batch: fits in cache like a burst from the socket would
MAX_SECONDS = 3.0  # per figure


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


def measure(name: str, total: int, run_batch: Callable[[], int]) -> tuple[str, float, float]:
    """Run ``run_batch`` (returns packets done) until ``total`` packets or the time bound."""
    done = 0
    cpu = wall = 0.0
    deadline = time.perf_counter() + MAX_SECONDS
    while done < total and time.perf_counter() < deadline:
        c0, w0 = time.process_time(), time.perf_counter()
        n = run_batch()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        done += n
    return name, cpu / done * 1e6, wall / done * 1e6


def srtp_session(profile: int) -> pylibsrtp.Session:
    key_len = 28 if profile == pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM else 30
    policy = pylibsrtp.Policy(
        key=os.urandom(key_len), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
    )
    # Every batch re-sends the same sequence numbers.
    policy.allow_repeat_tx = True
    policy.window_size = 2 * BATCH
    return pylibsrtp.Session(policy)


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    packets = make_packets(BATCH)
    twcc = TransportCcSequencer(ext_id=3)

    def new_rewriter() -> RtpRewriter:
        return RtpRewriter(0xCAFEBABE, {96: 100}, {2: 2}, twcc=twcc, initial_sequence=1000)

    def fresh_outputs() -> list[bytes]:
        rw = new_rewriter()
        return [out for p in packets if (out := rw.rewrite(p)) is not None]

    outputs = fresh_outputs()
    assert len(outputs) == BATCH
    gcm = srtp_session(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    cm = srtp_session(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    target = receiver.getsockname()
    sink = bytearray(2048)
    dropped = 0

    def drain() -> None:
        try:
            while True:
                receiver.recv_into(sink)
        except BlockingIOError:
            pass

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
            return BATCH

        return run

    def batch_rewrite_protect() -> int:
        rw = new_rewriter()
        rewrite, protect = rw.rewrite, gcm.protect
        for p in packets:
            out = rewrite(p)
            if out is not None:
                protect(out)
        return BATCH

    def batch_floor() -> int:
        nonlocal dropped
        protect, sendto = gcm.protect, sender.sendto
        for i, out in enumerate(outputs):
            data = protect(out)
            try:
                sendto(data, target)
            except BlockingIOError:
                dropped += 1
            if i & 63 == 63:
                drain()
        drain()
        return BATCH

    def batch_sendto() -> int:
        nonlocal dropped
        sendto = sender.sendto
        protected = [gcm.protect(o) for o in outputs[:64]]
        for _ in range(BATCH // 64):
            for data in protected:
                try:
                    sendto(data, target)
                except BlockingIOError:
                    dropped += 1
            drain()
        return BATCH

    # The drain's recv_into calls land inside the floor's timing, as they would on a real
    # server reading its socket; they cost ≈ 1 µs, measured in DESIGN.md.
    floor = measure("floor: protect (GCM) + sendto 1200 B", total, batch_floor)
    rows = [
        measure("parse header fields (read_header)", total, batch_parse),
        measure("RtpRewriter.rewrite, 1200 B, 3 extensions", total, batch_rewrite),
        measure("pylibsrtp protect AEAD_AES_128_GCM", total, batch_protect(gcm)),
        measure("pylibsrtp protect AES_CM_128_HMAC_SHA1_80", total, batch_protect(cm)),
        measure("rewrite + protect (GCM)", total, batch_rewrite_protect),
        measure("raw sendto 1200 B (+ drain)", total, batch_sendto),
        floor,
    ]
    print(f"per-packet cost, up to {total} packets or {MAX_SECONDS:.0f} s per figure")
    print(f"{'':44s} {'CPU µs':>8s} {'wall µs':>8s} {'CPU/floor':>10s}")
    for name, cpu, wall in rows:
        print(f"{name:44s} {cpu:8.2f} {wall:8.2f} {cpu / floor[1]:9.2f}x")
    if dropped:
        print(f"({dropped} sends hit a full socket buffer and were dropped)")
    sender.close()
    receiver.close()


if __name__ == "__main__":
    main()
