"""Throughput of the sans-IO SCTP + data-channel cores alone: two DataChannelEndpoints in memory.

No DTLS, no sockets: packets go straight from one endpoint to the other with a fake clock that
advances 50 µs per round of the loop (so congestion control sees a short RTT and opens up).
The figure is the CPU cost of both ends of SCTP (framing, CRC32c, SACKs, reassembly, DCEP), i.e.
an upper bound for what the Trio driver can reach over a real socket. Per packet it is printed
beside the floor measured in the same run (``bench.floor.measure_floor``: one raw ``sendto`` of
1200 bytes plus one pylibsrtp GCM protect), as every bench does, so that the ratio can be set
against ``bench.datachannel``'s, which pays for DTLS and the socket on top. Printed, not
asserted; the amount of data is bounded.

Run from the repository root: ``.venv/bin/python -m bench.sctp_core [megabytes]``
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque

from bench.floor import measure_floor
from trio_sfu.proto.datachannel import (
    AssociationEstablished,
    ChannelMessage,
    ChannelOpened,
    DataChannelEndpoint,
    DataChannelEvent,
)

TICK = 50e-6


def _pair() -> tuple[DataChannelEndpoint, DataChannelEndpoint]:
    client = DataChannelEndpoint(is_dtls_client=True, remote_max_message_size=262144,
                                 rng=random.Random(1).randbytes)
    server = DataChannelEndpoint(is_dtls_client=False, remote_max_message_size=262144,
                                 rng=random.Random(2).randbytes)
    return client, server


def _shuttle(
    a: DataChannelEndpoint, b: DataChannelEndpoint, now: float
) -> tuple[int, list[DataChannelEvent]]:
    """Deliver packets one at a time, each receiver answering at once (as a driver drains its
    output after every datagram), until both sides are quiet; then fire due timers."""
    moved = 0
    to_b = deque(a.packets_to_send(now))
    to_a = deque(b.packets_to_send(now))
    while to_a or to_b:
        if to_b:
            b.receive_packet(to_b.popleft(), now)
            to_a.extend(b.packets_to_send(now))
            moved += 1
        if to_a:
            a.receive_packet(to_a.popleft(), now)
            to_b.extend(a.packets_to_send(now))
            moved += 1
    for end in (a, b):
        t = end.get_timer()
        if t is not None and t <= now:
            end.handle_timer(now)
    while a.next_event() is not None:
        pass
    events = []
    while (ev := b.next_event()) is not None:
        events.append(ev)
    return moved, events


def run(total_bytes: int, message_size: int) -> tuple[float, float, int, int]:
    client, server = _pair()
    now = 0.0
    client.connect(now)
    established = False
    while not established:
        now += TICK
        _, events = _shuttle(client, server, now)
        established = any(isinstance(e, AssociationEstablished) for e in events)
    cid = client.open_channel("bulk", now)
    opened = False
    while not opened:
        now += TICK
        _, events = _shuttle(client, server, now)
        opened = any(isinstance(e, ChannelOpened) for e in events)

    payload = bytes(message_size)
    count = total_bytes // message_size
    sent = received = packets = 0
    window = 4 * 1024 * 1024  # keep a few MB queued, as a well-behaved application would
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    while received < count * message_size:
        while sent < count and client.buffered_amount(cid) < window:
            client.send(cid, payload, now)
            sent += 1
        now += TICK
        moved, events = _shuttle(client, server, now)
        packets += moved
        for e in events:
            if isinstance(e, ChannelMessage):
                received += len(e.data)
    cpu = time.process_time() - start_cpu
    wall = time.perf_counter() - start_wall
    retransmissions = client.association.retransmissions
    return cpu, wall, packets, retransmissions


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    total = megabytes * 1024 * 1024
    floor_cpu, _ = measure_floor()
    print(f"DataChannelEndpoint pair in memory, {megabytes} MB per run, both ends in this process")
    print(f"  floor (raw sendto 1200 B + GCM protect, same run): {floor_cpu:.2f} µs CPU per packet")
    for size in (16 * 1024, 64 * 1024):
        cpu, wall, packets, rtx = run(total, size)
        mbps = total / cpu / 1e6
        print(
            f"  {size // 1024:>3} KiB messages: {mbps:6.1f} MB/s of CPU time "
            f"({total / wall / 1e6:6.1f} MB/s wall), {packets} packets, "
            f"{cpu / packets * 1e6:5.1f} µs CPU per packet (both ends, "
            f"{cpu / packets * 1e6 / floor_cpu:.2f}× floor), {rtx} retransmissions"
        )


if __name__ == "__main__":
    main()
