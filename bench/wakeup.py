"""What one wake-up costs, apart from any packet's work (issue 10, small rooms).

A small room's pod is mostly asleep: at 300 packets/s in 30 frames it wakes ~30 times a second
for media, and every timer of its own is one more wake-up. This bench measures the CPU of a
wake-up on this machine: a receiver waits for a UDP socket to become readable, then drains it
(``recvfrom_into`` until ``BlockingIOError``), while a sender process sends bursts of
``per_frame`` 1200-byte datagrams 30 times a second. Two receivers, one after the other:

* ``epoll`` — a bare ``select.epoll`` loop: the kernel's part (sleep, wake, ``epoll_wait``, the
  ``recvfrom`` calls) and nothing else;
* ``trio`` — ``trio.lowlevel.wait_readable`` in ``trio.run``, as ``UdpEndpoint.serve`` waits:
  the same plus one pass of Trio's run loop and the ``epoll_ctl`` its one-shot registration
  makes per wait.

CPU is ``time.process_time()`` from the first wake-up to the last, so imports and start-up are
left out. Printed: wake-ups, CPU µs per wake-up and per datagram for each, and the difference
(what Trio adds per wake-up). Nothing is asserted; each receiver runs ``SECONDS``.

Run from the repository root: ``.venv/bin/python -m bench.wakeup [packets per burst (10)]``
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time

import trio

SECONDS = 6
FPS = 30
SENDER = """
import socket, sys, time
port, per, seconds, fps = (int(a) for a in sys.argv[1:])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
data = bytes(1200)
t = time.monotonic()
for _ in range(seconds * fps):
    for _ in range(per):
        s.sendto(data, ("127.0.0.1", port))
    t += 1 / fps
    time.sleep(max(0.0, t - time.monotonic()))
s.sendto(b"", ("127.0.0.1", port))  # the end
"""


class Tally:
    """Wake-ups and datagrams, and the CPU clock at the first and the latest wake-up."""

    def __init__(self) -> None:
        self.wakes = 0
        self.packets = 0
        self.cpu_first = 0.0
        self.cpu_last = 0.0

    def woke(self) -> None:
        now = time.process_time()
        if not self.wakes:
            self.cpu_first = now
        self.cpu_last = now
        self.wakes += 1

    def drain(self, sock: socket.socket, buf: bytearray) -> bool:
        """Read until the socket is empty; False once the end marker came."""
        while True:
            try:
                n, _ = sock.recvfrom_into(buf)
            except BlockingIOError:
                return True
            if n == 0:
                return False
            self.packets += 1


def run_epoll(sock: socket.socket, tally: Tally) -> None:
    buf = bytearray(2048)
    poller = select.epoll()
    poller.register(sock, select.EPOLLIN)
    try:
        while True:
            poller.poll()
            tally.woke()
            if not tally.drain(sock, buf):
                return
    finally:
        poller.close()


async def run_trio(sock: socket.socket, tally: Tally) -> None:
    buf = bytearray(2048)
    while True:
        await trio.lowlevel.wait_readable(sock)
        tally.woke()
        if not tally.drain(sock, buf):
            return


def measure(kind: str, per_frame: int) -> Tally:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    tally = Tally()
    args = [str(a) for a in (port, per_frame, SECONDS, FPS)]
    sender = subprocess.Popen([sys.executable, "-c", SENDER, *args])
    try:
        if kind == "epoll":
            run_epoll(sock, tally)
        else:
            trio.run(run_trio, sock, tally)
    finally:
        sender.kill()
        sender.wait()
        sock.close()
    return tally


def main() -> None:
    per_frame = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(
        f"a receiver woken by bursts of {per_frame} × 1200 B, {FPS} bursts/s, {SECONDS} s each; "
        "CPU from the first wake-up to the last"
    )
    per_wake = {}
    for kind in ("epoll", "trio"):
        t = measure(kind, per_frame)
        cpu = t.cpu_last - t.cpu_first
        wakes = max(t.wakes - 1, 1)
        per_wake[kind] = cpu / wakes * 1e6
        print(
            f"  {kind:6s} {t.wakes:5d} wake-ups, {t.packets:6d} datagrams: "
            f"{per_wake[kind]:6.1f} µs CPU per wake-up, {cpu / max(t.packets, 1) * 1e6:5.1f} µs "
            "per datagram"
        )
    print(f"  Trio's run loop adds {per_wake['trio'] - per_wake['epoll']:.1f} µs per wake-up")


if __name__ == "__main__":
    main()
