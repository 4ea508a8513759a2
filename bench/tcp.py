"""ICE-TCP send cost per packet (issue 12): RFC 4571 framing + non-blocking ``send`` through a
``TcpConnection`` versus a raw UDP ``sendto``, both 1200 bytes on loopback, in the same run,
beside the floor (DESIGN.md). Figures, never asserts.

Run from the repository root: ``.venv/bin/python -m bench.tcp [packets]``.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator

from bench.floor import Loopback, measure, measure_floor, rtp_packets
from trio_sfu.rtc.tcp import TcpConnection, TcpEndpoint

BATCH = 128  # packets between drains: well inside the socket buffers, so nothing queues


def tcp_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    for s in (client, server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
    return listener, client, server


def drain(sock: socket.socket, sink: bytearray) -> None:
    try:
        while sock.recv_into(sink):
            pass
    except BlockingIOError:
        pass


def main(argv: list[str]) -> None:
    packets = int(argv[0]) if argv else 100_000
    batch = rtp_packets(BATCH)
    sink = bytearray(1 << 16)
    listener, client, server = tcp_pair()
    endpoint = TcpEndpoint(listener, lambda ufrag: None)
    conn = TcpConnection(endpoint, server, client.getsockname())

    def tcp_run() -> int:
        send = conn.send
        for packet in batch:
            send(packet)
        return len(batch)

    def tcp_batches() -> Iterator[Callable[[], int]]:
        while True:
            yield tcp_run
            drain(client, sink)
            conn._write()  # whatever queued is flushed outside the timed region

    with Loopback() as link:

        def udp_run() -> int:
            link.send_all(batch)
            return len(batch)

        def udp_batches() -> Iterator[Callable[[], int]]:
            while True:
                yield udp_run
                link.drain()

        floor_cpu, _ = measure_floor()
        udp_cpu, _ = measure(packets, udp_batches())
        tcp_cpu, _ = measure(packets, tcp_batches())
    stats = endpoint.stats
    print(f"1200-byte packets, up to {packets} or 3 s per figure; CPU µs per packet")
    print(f"  UDP raw sendto                 {udp_cpu:6.2f}")
    print(f"  ICE-TCP TcpConnection.send     {tcp_cpu:6.2f}   ({tcp_cpu / udp_cpu:.2f}x UDP)")
    print(f"  floor (protect GCM + sendto)   {floor_cpu:6.2f}")
    print(f"  TCP frames dropped (queue full): {stats.send_dropped}")
    for s in (client, server, listener):
        s.close()


if __name__ == "__main__":
    main(sys.argv[1:])
