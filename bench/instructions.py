"""Instructions per packet on the real per-packet code, counted by callgrind (issue 10).

CPU-time benches on a shared VM move by ± 30 % between runs of the same code; callgrind counts
the instructions a process runs, the same whatever else the machine does, so it can tell two
builds of the same code apart (pure Python against ``scripts/compile``'s mypyc build) where
the clock cannot. Each scenario runs twice under ``valgrind --tool=callgrind`` with a small
and a large fixed number of packets; the difference of the two totals over the difference of
the packets is the count per packet, start-up and imports cancelled out. Three scenarios:

* ``forward``: the forwarding path of ``bench.forward`` (``tests/fanout_helpers``'s track,
  ``N`` subscribers in one forwarding group: ``PublishedTrack.on_rtp`` → group rewrite →
  ``DownTrack`` → SRTP protect → ``sendto``), 10-packet bursts of 1100-byte VP8 payloads, the
  loopback socket drained after each burst; per outbound packet.
* ``bwe``: one subscriber's bandwidth estimator as browsers drive it: 23 packets sent
  (``on_packet_sent``), then one transport-cc feedback reporting them, as parsed
  (``on_transport_cc``); per packet.
* ``ingest``: a publisher's SRTP datagram into a connected server ``PeerCore``
  (``tests/test_peer_core.Pair``: demultiplexing, SRTP unprotect, the stream's lookup and
  counters, ``on_rtp``); per packet. The client's protect of the same packets is counted in a
  run of its own (``protect``) and taken off.

Counted in user space only (the kernel's part of ``sendto`` is not an instruction callgrind
sees), so ``forward`` is the pod's own work plus libsrtp, not the floor. Printed with which
modules ran compiled. Needs Debian's ``valgrind``; without it the bench says so and exits 0.

Run from the repository root: ``.venv/bin/python -m bench.instructions [N (10)]``
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

SMALL, LARGE = 500, 2500  # incoming packets (forward) or packets sent (bwe) per run
FEEDBACK_EVERY = 23  # a browser's transport-cc feedback every 100 ms at ≈ 230 packets/s


def _forward(packets: int, fanout: int) -> None:
    import trio

    from bench.floor import Loopback
    from bench.forward import keyframed_track
    from tests.fanout_helpers import packet
    from trio_sfu.rtc.server import RtcServer

    async def run() -> None:
        server = RtcServer.bind("127.0.0.1")
        link = Loopback()
        try:
            setup = keyframed_track(server, link, fanout)
            track, stream = setup.track, setup.stream
            payload = bytes(1100)
            for burst in range(packets // 10):
                rtps = [packet(1 + burst * 10 + k, payload) for k in range(10)]
                now = trio.current_time()
                for rtp in rtps:
                    track.on_rtp(stream, rtp, now)
                link.drain()
            if link.received < packets * fanout:
                raise RuntimeError(f"{link.received} of {packets * fanout} datagrams arrived")
        finally:
            link.close()
            server.close()

    trio.run(run)


def _bwe(packets: int) -> None:
    from trio_sfu.proto.bwe import BandwidthEstimator

    estimator = BandwidthEstimator(1_000_000)
    seq = 0
    now = 0.0
    arrival_us = 0
    for _ in range(packets // FEEDBACK_EVERY):
        # as TransportCcFeedback.parse gives them: (seq, received, delta µs from the last)
        statuses: list[tuple[int, bool, int | None]] = []
        reference_us = arrival_us
        for k in range(FEEDBACK_EVERY):
            estimator.on_packet_sent(seq & 0xFFFF, 1100, now)
            delta = 4348 + (k % 3) * 50  # a little jitter: the trendline has work
            statuses.append((seq & 0xFFFF, True, delta))
            arrival_us += delta
            seq += 1
            now += 1 / 230
        estimator.on_transport_cc(statuses, reference_us, now + 0.02)


def _ingest(packets: int, receive: bool) -> None:
    """SRTP packets a connected client core protects and, with ``receive``, the server core
    takes in (the set-up and the protect are the same either way: the difference is the
    server's ingest)."""
    from tests.test_peer_core import CLIENT_ADDR, Pair

    pair = Pair(video=True, data=False)
    pair.connect()
    server = pair.server
    for seq in range(1, packets + 1):
        data = pair.rtp_packet(seq)
        if receive:
            server.receive_datagram(data, CLIENT_ADDR, pair.now)
    if receive and len(pair.rtp) != packets:
        raise RuntimeError(f"{len(pair.rtp)} of {packets} packets reached on_rtp")


def _count(scenario: str, packets: int, fanout: int) -> int:
    """Instructions of one run of ``scenario`` under callgrind."""
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.instructions",
            "--inside",
            scenario,
            str(packets),
            str(fanout),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def _extra(scenario: str, fanout: int = 0) -> int:
    """Instructions the LARGE run of ``scenario`` takes beyond the SMALL one: start-up,
    imports and set-up cancelled out."""
    return _count(scenario, LARGE, fanout) - _count(scenario, SMALL, fanout)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        scenario, packets, fanout = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        if scenario == "forward":
            _forward(packets, fanout)
        elif scenario in ("ingest", "protect"):
            _ingest(packets, scenario == "ingest")
        else:
            _bwe(packets)
        return
    if shutil.which("valgrind") is None:
        print("valgrind not found: install Debian's package (apt-get install -y valgrind)")
        return
    fanout = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    from trio_sfu.compiled import COMPILED_MODULES, compiled_modules

    done = compiled_modules()
    print(
        f"{len(done)} of {len(COMPILED_MODULES)} per-packet modules compiled"
        f" ({'mypyc' if done else 'pure Python'}); python {sys.version.split()[0]}"
    )
    for scenario, unit, per in (
        ("forward", f"outbound packet (N = {fanout}, one group)", fanout),
        ("bwe", f"packet sent and reported (feedback every {FEEDBACK_EVERY})", 1),
    ):
        started = time.monotonic()
        step = 10 if scenario == "forward" else FEEDBACK_EVERY  # whole bursts / feedbacks
        packets = (LARGE // step - SMALL // step) * step * per
        per_packet = _extra(scenario, fanout) / packets
        print(
            f"{scenario:8s} {per_packet:9,.0f} instructions per {unit}"
            f"  ({time.monotonic() - started:.0f} s under callgrind)"
        )
    started = time.monotonic()
    ingest, protect = _extra("ingest"), _extra("protect")
    print(
        f"{'ingest':8s} {(ingest - protect) / (LARGE - SMALL):9,.0f} instructions per packet"
        f" into the server's PeerCore (the client's protect, {protect / (LARGE - SMALL):,.0f}"
        f" per packet, taken off)  ({time.monotonic() - started:.0f} s under callgrind)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # (the children inherit a fixed hash seed)
    main()
