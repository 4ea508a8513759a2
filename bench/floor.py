"""The per-packet floor every benchmark prints beside its own figures (DESIGN.md), and the few
pieces the benchmarks share to measure it and themselves the same way.

A forwarded packet always costs one raw non-blocking ``sendto`` of ~1200 bytes and one SRTP
protect, however good the Python around it is. Measuring it in the same run as the figure it
is compared with cancels out most of the noise of a shared machine, and measuring it in one
place keeps every bench's ratio comparable with the others'.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from types import TracebackType

import pylibsrtp

PACKET = 1200
MAX_SECONDS = 3.0  # per figure: a bench on a slow or busy machine still ends
FLOOR_BATCH = 256  # packets between drains of the receiving socket

GCM = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM


def srtp_session(
    profile: int = GCM, window_size: int = 0, *, key: bytes | None = None, inbound: bool = False
) -> pylibsrtp.Session:
    """A sending session that accepts the same sequence numbers again: benches replay one batch
    of packets. libsrtp still refuses an index older than the replay window, so a bench that
    re-sends a batch without a fresh session passes a ``window_size`` larger than the batch.
    With ``key`` and ``inbound``: the receiving end of a sending session made with that key."""
    policy = pylibsrtp.Policy(
        key=key or os.urandom(28 if profile == GCM else 30),
        ssrc_type=(
            pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        ),
        srtp_profile=profile,
    )
    policy.allow_repeat_tx = True
    if window_size:
        policy.window_size = window_size
    return pylibsrtp.Session(policy)


def gcm_session(window_size: int = 0) -> pylibsrtp.Session:
    """AEAD_AES_128_GCM, the profile browsers negotiate first and the one the floor uses."""
    return srtp_session(GCM, window_size)


def rtp_packets(count: int, first_seq: int = 0, size: int = PACKET) -> list[bytes]:
    """Plain RTP packets (no extensions) with consecutive sequence numbers from ``first_seq``.
    The payload is random once: what SRTP and the socket cost does not depend on the bytes."""
    header = bytes.fromhex("806000000000000011223344")
    payload = os.urandom(size - len(header))
    return [
        header[:2] + ((first_seq + i) & 0xFFFF).to_bytes(2, "big") + header[4:] + payload
        for i in range(count)
    ]


class Loopback:
    """A non-blocking UDP sender and a receiving socket on 127.0.0.1 that the bench drains.

    The receive buffer is 4 MiB: on loopback a datagram to a full receiver is dropped without
    ``sendto`` failing (and costs less than one delivered), so with the default buffer most of
    a batch between drains would silently measure the cheaper path. ``dropped`` counts the
    sends that did fail (a full send buffer)."""

    def __init__(self) -> None:
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.setblocking(False)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.setblocking(False)
        self.dest = self.rx.getsockname()
        self.dropped = 0
        self.received = 0
        self._sink = bytearray(2048)

    def send_all(self, datagrams: Iterable[bytes]) -> None:
        sendto, dest = self.tx.sendto, self.dest
        for data in datagrams:
            try:
                sendto(data, dest)
            except BlockingIOError:
                self.dropped += 1

    def drain(self) -> int:
        """Read every datagram waiting; returns how many (also added to ``received``)."""
        recv_into, sink = self.rx.recv_into, self._sink
        n = 0
        try:
            while True:
                recv_into(sink)
                n += 1
        except BlockingIOError:
            pass
        self.received += n
        return n

    def close(self) -> None:
        self.rx.close()
        self.tx.close()

    def __enter__(self) -> Loopback:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def measure(
    total: int, batches: Iterator[Callable[[], int]], max_seconds: float = MAX_SECONDS
) -> tuple[float, float]:
    """(CPU µs, wall µs) per packet, over ``total`` packets or ``max_seconds``, whichever ends
    first.

    Each item of ``batches`` runs inside the timed region and returns how many packets it did;
    what the iterator does to produce the next one (building packets, fresh sessions, draining
    the socket) runs outside it, so only the per-packet work is counted. CPU time
    (``time.process_time``) is the figure benches compare; wall time (``time.perf_counter``)
    shows when the machine was busy with something else."""
    done = 0
    cpu = wall = 0.0
    deadline = time.perf_counter() + max_seconds
    while done < total and time.perf_counter() < deadline:
        run = next(batches)
        c0, w0 = time.process_time(), time.perf_counter()
        n = run()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        done += n
    return cpu / done * 1e6, wall / done * 1e6


def measure_floor(packets: int = 20_000, max_seconds: float = MAX_SECONDS) -> tuple[float, float]:
    """(CPU µs, wall µs) per packet for GCM protect + raw sendto of 1200 bytes to a loopback
    socket drained between batches, outside the timed region."""
    batch = rtp_packets(FLOOR_BATCH)
    with Loopback() as link:

        def run(protect: Callable[[bytes], bytes]) -> int:
            link.send_all(map(protect, batch))
            return len(batch)

        def batches() -> Iterator[Callable[[], int]]:
            while True:
                # A fresh replay window each time: the batch repeats its sequence numbers.
                yield partial(run, gcm_session().protect)
                link.drain()

        return measure(packets, batches(), max_seconds)


def measure_cadence_floor(per_frame: int, fps: float, frames: int = 150) -> float:
    """CPU µs per packet of the least any process does to forward media that arrives as a
    camera sends it: ``frames`` bursts of ``per_frame`` SRTP packets, ``fps`` bursts a second.

    :func:`measure_floor` protects and sends in a tight loop, with caches warm and nobody to
    wake. A pod at a small room's rate instead sleeps between frames, and on a VM whatever runs
    after a sleep runs several times slower (docs/benchmarks.md, "Why a wake-up costs so much
    on this VM"); every send also wakes a receiver that sleeps too. So this floor is a bare
    forwarder in a process of its own — a blocking ``recv``, SRTP unprotect, protect, one
    ``sendto`` to a receiver process that blocks in ``recv`` — fed at that cadence by this
    process, with its CPU time (user + system, the kernel's sleep and wake included) over the
    packets: what the pod's ingest plus one forward costs here with no Python of ours around
    it, no event loop, no statistics. Forks two processes; bounded by ``frames / fps`` + 5 s."""
    key = os.urandom(28)
    sender, inbound = srtp_session(key=key), srtp_session(key=key, inbound=True)
    outbound = gcm_session()
    total = frames * per_frame
    protected = [sender.protect(p) for p in rtp_packets(total)]
    limit = frames / fps + 5.0
    # hop: this process → the forwarder; sink: the forwarder → the receiver (their rx sockets
    # block, with a timeout, in the children: settimeout overrides Loopback's non-blocking)
    with Loopback() as hop, Loopback() as sink:
        receiver = os.fork()
        if receiver == 0:  # the subscriber: blocks in recv, as a client's socket does
            sink.rx.settimeout(limit)
            try:
                for _ in range(total):
                    sink.rx.recv(2048)
            finally:
                os._exit(0)
        reader, writer = os.pipe()
        forwarder = os.fork()
        if forwarder == 0:  # the bare forwarder
            status = 1
            try:
                hop.rx.settimeout(limit)
                recv, unprotect, protect = hop.rx.recv, inbound.unprotect, outbound.protect
                sendto, dest = sink.tx.sendto, sink.dest
                started = time.process_time()
                for _ in range(total):
                    sendto(protect(unprotect(recv(2048))), dest)
                os.write(writer, repr(time.process_time() - started).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(writer)
        try:
            time.sleep(0.2)  # both children are in recv
            start = time.monotonic()
            for frame in range(frames):
                hop.send_all(protected[frame * per_frame : (frame + 1) * per_frame])
                time.sleep(max(0.0, start + (frame + 1) / fps - time.monotonic()))
            with os.fdopen(reader, "rb") as result:
                cpu = float(result.read() or b"nan")  # nan: the forwarder lost a packet
        finally:
            for pid in (forwarder, receiver):
                os.waitpid(pid, 0)
    return cpu / total * 1e6
