"""CPU cost of SRTP protect/unprotect per 1200-byte packet, beside the floor of this run.

The floor (``bench.floor.measure_floor``) is one pylibsrtp AEAD_AES_128_GCM ``protect`` plus
one raw non-blocking ``sendto`` of 1200 bytes to a drained UDP socket on 127.0.0.1, measured in
the same run; a raw ``sendto`` alone is printed too, to show the socket's share of it. For each
profile the bench prints our :class:`~trio_sfu.proto.srtp.SrtpContext` calls and the bare
pylibsrtp ``Session`` calls underneath (the difference is the wrapper's cost), in microseconds
of CPU time (``time.process_time``) and wall time, with the ratio to the floor. Nothing is
asserted; loops are bounded by a packet count and a time limit per figure.

Run from the repository root: ``.venv/bin/python -m bench.srtp [packets]``
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from functools import partial

from bench.floor import PACKET, Loopback, measure, measure_floor, rtp_packets
from trio_sfu.proto.srtp import PROFILES, SrtpContext

BATCH = 512


class Packets:
    """Fresh RTP packets with increasing sequence numbers, so neither side ever sees a
    replay; building them is outside the timed region."""

    def __init__(self) -> None:
        self.seq = 0

    def batch(self) -> list[bytes]:
        out = rtp_packets(BATCH, self.seq + 1)
        self.seq += BATCH
        return out


def apply(op: Callable[[bytes], object], batch: list[bytes]) -> int:
    for packet in batch:
        op(packet)
    return len(batch)


def each(total: int, prepare: Callable[[], list[bytes]], op: Callable[[bytes], object]
         ) -> tuple[float, float]:
    """µs per packet (CPU, wall) of ``op`` over batches from ``prepare``."""

    def batches() -> Iterator[Callable[[], int]]:
        while True:
            yield partial(apply, op, prepare())

    return measure(total, batches())


def sendto_only(total: int) -> tuple[float, float, int]:
    """A raw ``sendto`` of the same 1200 bytes, the socket being drained between batches."""
    data = [os.urandom(PACKET)] * BATCH
    with Loopback() as link:

        def send(batch: list[bytes]) -> int:
            link.send_all(batch)
            return len(batch)

        def batches() -> Iterator[Callable[[], int]]:
            while True:
                link.drain()
                yield partial(send, data)

        cpu, wall = measure(total, batches())
        return cpu, wall, link.dropped


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    floor_cpu, floor_wall = measure_floor(total)
    sendto_cpu, sendto_wall, dropped = sendto_only(total)
    rows: list[tuple[str, float, float]] = [
        ("floor: protect (GCM) + sendto 1200 B", floor_cpu, floor_wall),
        ("raw sendto 1200 B", sendto_cpu, sendto_wall),
    ]

    for name in ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"):
        # A fresh pair and sequence per figure: a receiver that first sees a stream after
        # the sender's sequence number wrapped cannot guess the rollover counter.
        def contexts(name: str = name) -> tuple[SrtpContext, SrtpContext, Packets]:
            material = os.urandom(PROFILES[name].keying_material_length)
            return (SrtpContext.from_dtls(name, material, is_client=True),
                    SrtpContext.from_dtls(name, material, is_client=False), Packets())

        sender, _, packets = contexts()
        rows.append((f"{name} protect_rtp", *each(total, packets.batch, sender.protect_rtp)))
        sender, _, packets = contexts()
        rows.append((f"{name}   bare Session.protect",
                     *each(total, packets.batch, sender._tx.protect)))
        for label, bare in (("unprotect_rtp", False), ("  bare Session.unprotect", True)):
            sender, receiver, packets = contexts()

            def protected_batch(
                packets: Packets = packets, sender: SrtpContext = sender
            ) -> list[bytes]:
                return [sender.protect_rtp(p) for p in packets.batch()]

            op = receiver._rx.unprotect if bare else receiver.unprotect_rtp
            rows.append((f"{name} {label}", *each(total, protected_batch, op)))

    width = max(len(r[0]) for r in rows)
    print(f"{'per 1200-byte packet':<{width}}  {'CPU µs':>8}  {'wall µs':>8}  {'x floor':>7}")
    for label, cpu, wall in rows:
        print(f"{label:<{width}}  {cpu:8.2f}  {wall:8.2f}  {cpu / floor_cpu:7.2f}")
    if dropped:
        print(f"(raw sendto: {dropped} sends hit a full socket buffer and were dropped)")


if __name__ == "__main__":
    main()
