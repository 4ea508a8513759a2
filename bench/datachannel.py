"""Data-channel throughput between two trio-sfu stacks over loopback (SCTP over DTLS over UDP).

Our client sends fixed-size messages on one reliable ordered channel to a server peer on the
shared UDP endpoint, both in this process (so CPU time is the cost of both ends). Printed: MB/s
of delivered payload (wall), CPU µs per 1200-byte datagram, and the floor measured in the same
run — one raw non-blocking ``sendto`` of 1200 bytes plus one pylibsrtp GCM protect — as the
ratio we track (``bench.floor.measure_floor``). Nothing is asserted; counts and time are bounded.

Run from the repository root: ``.venv/bin/python -m bench.datachannel [megabytes]``
"""

from __future__ import annotations

import sys
import time

import trio

from bench.floor import measure_floor
from trio_sfu.client import ClientPeerConnection
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.server import RtcServer

MAX_SECONDS = 20.0


async def run(total_bytes: int, message_size: int) -> tuple[float, float, int]:
    server = RtcServer.bind("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        client = ClientPeerConnection()
        channel = client.create_data_channel("bulk")
        spc = server.create_peer("bench")
        client.handle_answer(spc.handle_offer(client.create_offer()))
        await nursery.start(spc.run)
        await nursery.start(client.run)
        received = 0
        done = trio.Event()

        async def sink() -> None:
            nonlocal received
            async for event in spc.events:
                if isinstance(event, ev.DataChannelMessage):
                    received += len(event.data)
                    if received >= total_bytes:
                        done.set()

        nursery.start_soon(sink)
        async for event in client.events:
            if isinstance(event, ev.DataChannelOpen):
                break
        payload = bytes(message_size)
        datagrams_before = server.endpoint.stats.datagrams_in + server.endpoint.stats.datagrams_out
        c0, w0 = time.process_time(), time.perf_counter()
        with trio.move_on_after(MAX_SECONDS):
            sent = 0
            while sent < total_bytes:
                channel.send(payload)
                sent += message_size
                await channel.wait_buffered_amount_below(1 << 20)
            await done.wait()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        datagrams = (
            server.endpoint.stats.datagrams_in
            + server.endpoint.stats.datagrams_out
            - datagrams_before
        )
        nursery.cancel_scope.cancel()
    server.close()
    return received / wall / 1e6, cpu, datagrams


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    floor_cpu, _ = measure_floor()
    print(f"floor (raw sendto 1200 B + GCM protect): {floor_cpu:.2f} µs CPU per datagram")
    print(f"{'message':>8} {'MB/s':>8} {'µs/datagram':>12} {'× floor':>8}")
    for size in (16 * 1024, 64 * 1024):
        mbps, cpu, datagrams = trio.run(run, megabytes * 1_000_000, size)
        per = cpu / max(datagrams, 1) * 1e6
        print(f"{size // 1024:>6}Ki {mbps:>8.1f} {per:>12.2f} {per / floor_cpu:>8.2f}")


if __name__ == "__main__":
    main()
