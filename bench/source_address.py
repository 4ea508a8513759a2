"""What replying from the right local address costs per packet (issue 8, item 4).

A socket bound to the wildcard address (the default ``--udp-host 0.0.0.0``) on a host with
several addresses must send each peer's traffic from the address that peer's checks arrived on
(Firefox drops answers from another one). Two ways to get there:

* **IP_PKTINFO / IPV6_RECVPKTINFO**: ``recvmsg_into`` returns each datagram's destination
  address as ancillary data; ``sendmsg`` with an ``IP_PKTINFO`` control message picks the source.
* **One socket per local address**: plain ``recvfrom_into``/``sendto`` on each (the socket *is*
  the local address), at the price of enumerating addresses at start and one reader per socket.

This bench measures the per-packet CPU of each primitive on loopback beside the floor (GCM
protect + ``sendto``), so the choice in ``rtc/udp.py`` rests on figures:

    .venv/bin/python -m bench.source_address
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

from bench.floor import FLOOR_BATCH, PACKET, measure, measure_floor

PACKETS = 40_000
PKTINFO_SPACE = socket.CMSG_SPACE(12)  # struct in_pktinfo
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux <linux/in.h>; Python < 3.12 lacks it


def _pair() -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    tx.bind(("0.0.0.0", 0))
    return rx, tx, rx.getsockname()


def _drain(rx: socket.socket) -> None:
    sink = bytearray(2048)
    try:
        while True:
            rx.recv_into(sink)
    except BlockingIOError:
        pass


def bench_send(with_pktinfo: bool) -> float:
    rx, tx, dest = _pair()
    data = bytes(PACKET)
    # in_pktinfo: ifindex 0, spec_dst = the chosen source, addr unused.
    cmsg = [(socket.IPPROTO_IP, IP_PKTINFO,
             bytes(4) + socket.inet_aton("127.0.0.1") + bytes(4))]

    def run() -> int:
        if with_pktinfo:
            sendmsg = tx.sendmsg
            for _ in range(FLOOR_BATCH):
                sendmsg((data,), cmsg, 0, dest)
        else:
            sendto = tx.sendto
            for _ in range(FLOOR_BATCH):
                sendto(data, dest)
        return FLOOR_BATCH

    def batches() -> Iterator[Callable[[], int]]:
        while True:
            yield run
            _drain(rx)

    try:
        return measure(PACKETS, batches())[0]
    finally:
        rx.close()
        tx.close()


def bench_recv(with_pktinfo: bool) -> float:
    rx, tx, dest = _pair()
    if with_pktinfo:
        rx.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    data = bytes(PACKET)
    buf = bytearray(4096)

    def fill() -> None:
        for _ in range(FLOOR_BATCH):
            tx.sendto(data, dest)

    def run() -> int:
        n = 0
        if with_pktinfo:
            recvmsg_into = rx.recvmsg_into
            bufs = [buf]
            while True:
                try:
                    _, anc, _, _ = recvmsg_into(bufs, PKTINFO_SPACE)
                except BlockingIOError:
                    return n
                n += 1
                # What the endpoint does with it: the local address, 4 bytes at offset 4.
                anc[0][2][4:8]
        else:
            recv = rx.recvfrom_into
            while True:
                try:
                    recv(buf)
                except BlockingIOError:
                    return n
                n += 1

    def batches() -> Iterator[Callable[[], int]]:
        while True:
            fill()
            yield run

    try:
        return measure(PACKETS, batches())[0]
    finally:
        rx.close()
        tx.close()


def main() -> None:
    floor = measure_floor()[0]
    print(f"floor (GCM protect + sendto, {PACKET} B): {floor:.2f} µs CPU/packet")
    rows = [
        ("sendto (per-address socket)", bench_send(False)),
        ("sendmsg + IP_PKTINFO", bench_send(True)),
        ("recvfrom_into (per-address socket)", bench_recv(False)),
        ("recvmsg_into + IP_PKTINFO", bench_recv(True)),
    ]
    for name, cpu in rows:
        print(f"{name:38s} {cpu:6.2f} µs CPU/packet  ({cpu / floor:4.2f} x floor)")


if __name__ == "__main__":
    main()
