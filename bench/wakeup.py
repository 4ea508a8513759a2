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
(what Trio adds per wake-up). Each wake-up is also split by the thread's CPU clock into the part
spent in the wait (from just before ``epoll_wait`` — for Trio, its ``before_io_wait``
instrument hook — to just after it returns: the kernel's sleep and wake, and for Trio the run
loop's code on either side of the call) and the part awake (draining, then back to the wait);
and the same drain of ``per_frame`` datagrams is timed with no sleep in between (the socket
refilled by this process, so the caches stay warm) — what a wake-up's work costs hot. Nothing
is asserted; each receiver runs ``SECONDS``.

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
    """Wake-ups and datagrams, the CPU clock at the first and the latest wake-up, and the
    thread's CPU split into time in the wait and time awake (ns, summed over wake-ups after the
    first)."""

    def __init__(self) -> None:
        self.wakes = 0
        self.packets = 0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.in_wait_ns = 0
        self.awake_ns = 0
        self.split = 0  # wake-ups the two sums cover
        self._entered = 0  # thread CPU clock as the latest wait began
        self._returned = 0  # ... and as it returned (0: no wait returned yet)

    def entering_wait(self) -> None:
        self._entered = time.thread_time_ns()

    def left_wait(self) -> None:
        now = time.thread_time_ns()
        if self._returned:
            self.awake_ns += self._entered - self._returned
            self.in_wait_ns += now - self._entered
            self.split += 1
        self._returned = now

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
            tally.entering_wait()
            poller.poll()
            tally.left_wait()
            tally.woke()
            if not tally.drain(sock, buf):
                return
    finally:
        poller.close()


class WaitSplit(trio.abc.Instrument):
    """Trio's side of the split: its hooks around the run loop's one ``epoll_wait`` call."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0:  # a real wait, not the run loop's poll with nothing to wait for
            self.tally.entering_wait()

    def after_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            self.tally.left_wait()


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
            trio.run(run_trio, sock, tally, instruments=[WaitSplit(tally)])
    finally:
        sender.kill()
        sender.wait()
        sock.close()
    return tally


def drain_hot(per_frame: int, rounds: int = 2000) -> float:
    """CPU µs of draining ``per_frame`` datagrams with no sleep between rounds: this process
    fills the socket itself right before each timed drain, so code and data stay cached."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = rx.getsockname()
    data = bytes(1200)
    tally = Tally()
    buf = bytearray(2048)
    spent = 0
    try:
        for _ in range(rounds):
            for _ in range(per_frame):
                tx.sendto(data, address)
            start = time.thread_time_ns()
            tally.drain(rx, buf)
            spent += time.thread_time_ns() - start
    finally:
        rx.close()
        tx.close()
    return spent / rounds / 1e3


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
        split = max(t.split, 1)
        print(
            f"         of which in the wait {t.in_wait_ns / split / 1e3:6.1f} µs, awake "
            f"{t.awake_ns / split / 1e3:6.1f} µs (thread CPU clock, {t.split} wake-ups)"
        )
    print(f"  Trio's run loop adds {per_wake['trio'] - per_wake['epoll']:.1f} µs per wake-up")
    print(
        f"  the same drain of {per_frame} datagrams with warm caches (no sleep between): "
        f"{drain_hot(per_frame):.1f} µs"
    )


if __name__ == "__main__":
    main()
