"""CPU cost of SRTP protect/unprotect per 1200-byte packet, beside the floor of this run.

The floor is a raw non-blocking ``sendto`` of 1200 bytes to a bound UDP socket on
127.0.0.1, measured in the same run. For each profile the bench prints our
:class:`~trio_sfu.proto.srtp.SrtpContext` calls and the bare pylibsrtp ``Session`` calls
underneath (the difference is the wrapper's cost), in microseconds of CPU time
(``time.process_time``) and wall time, with the ratio to the floor. Nothing is asserted;
loops are bounded by a packet count and a time limit per figure.

Run: ``.venv/bin/python bench/srtp.py [packets]``
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable

from trio_sfu.proto.srtp import PROFILES, SrtpContext

BATCH = 512
MAX_SECONDS = 3.0  # per figure
PACKET_SIZE = 1200


class Packets:
    """Fresh RTP packets with increasing sequence numbers, so neither side ever sees a
    replay; building them is outside the timed region."""

    def __init__(self) -> None:
        self.seq = 0
        self.payload = os.urandom(PACKET_SIZE - 12)

    def batch(self) -> list[bytes]:
        out = []
        for _ in range(BATCH):
            self.seq += 1
            out.append(
                struct.pack("!BBHII", 0x80, 96, self.seq & 0xFFFF, self.seq * 90, 0x11223344)
                + self.payload
            )
        return out


def measure(total: int, prepare: Callable[[], list[bytes]], op: Callable[[bytes], object]
            ) -> tuple[float, float]:
    """µs per packet (CPU, wall) of ``op`` over batches from ``prepare``."""
    done = 0
    cpu = wall = 0.0
    deadline = time.perf_counter() + MAX_SECONDS
    while done < total and time.perf_counter() < deadline:
        batch = prepare()
        c0, w0 = time.process_time(), time.perf_counter()
        for packet in batch:
            op(packet)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        done += len(batch)
    return cpu / done * 1e6, wall / done * 1e6


def sendto_floor(total: int) -> tuple[float, float, int]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    dest = rx.getsockname()
    data = os.urandom(PACKET_SIZE)
    dropped = 0

    def drain() -> list[bytes]:
        buf = bytearray(2048)
        while True:
            try:
                rx.recv_into(buf)
            except BlockingIOError:
                break
        return [data] * BATCH

    def send(packet: bytes) -> None:
        nonlocal dropped
        try:
            tx.sendto(packet, dest)
        except BlockingIOError:
            dropped += 1

    cpu, wall = measure(total, drain, send)
    rx.close()
    tx.close()
    return cpu, wall, dropped


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    floor_cpu, floor_wall, dropped = sendto_floor(total)
    rows: list[tuple[str, float, float]] = [("sendto 1200 B (floor)", floor_cpu, floor_wall)]

    for name in ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"):
        # A fresh pair and sequence per figure: a receiver that first sees a stream after
        # the sender's sequence number wrapped cannot guess the rollover counter.
        def contexts(name: str = name) -> tuple[SrtpContext, SrtpContext, Packets]:
            material = os.urandom(PROFILES[name].keying_material_length)
            return (SrtpContext.from_dtls(name, material, is_client=True),
                    SrtpContext.from_dtls(name, material, is_client=False), Packets())

        sender, _, packets = contexts()
        rows.append((f"{name} protect_rtp", *measure(total, packets.batch, sender.protect_rtp)))
        sender, _, packets = contexts()
        rows.append((f"{name}   bare Session.protect",
                     *measure(total, packets.batch, sender._tx.protect)))
        for label, bare in (("unprotect_rtp", False), ("  bare Session.unprotect", True)):
            sender, receiver, packets = contexts()

            def protected_batch(
                packets: Packets = packets, sender: SrtpContext = sender
            ) -> list[bytes]:
                return [sender.protect_rtp(p) for p in packets.batch()]

            op = receiver._rx.unprotect if bare else receiver.unprotect_rtp
            rows.append((f"{name} {label}", *measure(total, protected_batch, op)))

    width = max(len(r[0]) for r in rows)
    print(f"{'per 1200-byte packet':<{width}}  {'CPU µs':>8}  {'wall µs':>8}  {'x floor':>7}")
    for label, cpu, wall in rows:
        print(f"{label:<{width}}  {cpu:8.2f}  {wall:8.2f}  {cpu / floor_cpu:7.2f}")
    if dropped:
        print(f"(floor: {dropped} sends hit a full socket buffer and were dropped)")


if __name__ == "__main__":
    main()
