"""The per-packet floor every benchmark prints beside its own figures (DESIGN.md).

A forwarded packet always costs one raw non-blocking ``sendto`` of ~1200 bytes and one SRTP
protect, however good the Python around it is. Measuring it in the same run as the figure it
is compared with cancels out most of the noise of a shared machine.
"""

from __future__ import annotations

import os
import socket
import time

import pylibsrtp

PACKET = 1200


def gcm_session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=os.urandom(28),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    )
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


def rtp_packets(count: int, size: int = PACKET) -> list[bytes]:
    header = bytes.fromhex("806000000000000011223344")
    return [
        header[:2] + (i & 0xFFFF).to_bytes(2, "big") + header[4:] + os.urandom(size - 12)
        for i in range(count)
    ]


def measure_floor(packets: int = 20_000, max_seconds: float = 3.0) -> tuple[float, float]:
    """(CPU µs, wall µs) per packet for protect + raw sendto to a drained loopback socket."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    dest = rx.getsockname()
    batch = rtp_packets(256)
    done = 0
    cpu = wall = 0.0
    deadline = time.perf_counter() + max_seconds
    buf = bytearray(2048)
    try:
        while done < packets and time.perf_counter() < deadline:
            session = gcm_session()  # fresh replay window: the batch repeats its numbers
            c0, w0 = time.process_time(), time.perf_counter()
            for packet in batch:
                try:
                    tx.sendto(session.protect(packet), dest)
                except BlockingIOError:
                    pass
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            done += len(batch)
            while True:  # drain outside the timed region
                try:
                    rx.recv_into(buf)
                except BlockingIOError:
                    break
    finally:
        rx.close()
        tx.close()
    return cpu / done * 1e6, wall / done * 1e6
