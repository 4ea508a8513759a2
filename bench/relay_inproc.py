"""The media relay alone: CPU per relayed packet, sending and receiving, in one process.

``bench.relay`` measures whole pods, and on a shared two-core machine its phase differences
swing by 2× between runs (other processes' load lands in one phase and not the other). This
one isolates the relay: two ``NatsBus`` "pods" in this process over a disposable nats-server
(``tests.services``), pod A's ``MediaRelay.sender`` fed paced bursts of 1200-byte packets (a
burst per frame, as a publisher's encoder sends them) and pod B's ``subscribe`` counting them.
The CPU of the process (``getrusage``: every thread, user + system) over the same paced stream
is taken twice — once with nobody wanting the track (the sender returns at once: what the loop
and timers cost) and once relayed — and the difference per relayed packet is printed, beside
the difference per NATS message. nats-server's own CPU is not included.

Nothing is asserted; the stream is bounded. Run from the repository root (needs nats-server)::

    .venv/bin/python -m bench.relay_inproc [packets per burst (10)] [bursts (300)] [fps (30)]
"""

from __future__ import annotations

import resource
import shutil
import sys

import trio

from tests.aio.test_nats_bus import pods
from tests.services import nats_server

PACKET = bytes(1200)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def stream(send: object, per_burst: int, bursts: int, fps: float) -> None:
    assert callable(send)
    deadline = trio.current_time()
    for _ in range(bursts):
        for _ in range(per_burst):
            send(PACKET)
        deadline += 1 / fps
        await trio.sleep_until(deadline)
    await trio.sleep(0.3)  # the last burst arrives


async def run(url: str, per_burst: int, bursts: int, fps: float) -> None:
    async with pods(url, "pod-a", "pod-b") as (a, b):
        send = a.relay.sender("alice-1", "video-1")
        got = 0

        def on_packet(packet: bytes, now: float) -> None:
            nonlocal got
            got += 1

        await trio.sleep(0.5)
        c0 = cpu_seconds()
        await stream(send, per_burst, bursts, fps)
        idle = cpu_seconds() - c0
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", on_packet):
            with trio.fail_after(5):
                while not a.relay.wanted("alice-1", "video-1"):
                    await trio.sleep(0.01)
            await stream(send, per_burst, min(bursts, int(fps)), fps)  # warm-up
            got = 0
            messages0 = a.relay.counters.messages_sent
            c0 = cpu_seconds()
            await stream(send, per_burst, bursts, fps)
            relayed = cpu_seconds() - c0
            messages = a.relay.counters.messages_sent - messages0
    extra = relayed - idle
    print(
        f"{per_burst} packets × {bursts} bursts at {fps:g}/s ({per_burst * fps:g} packets/s): "
        f"B got {got} of {per_burst * bursts} in {messages} NATS messages; "
        f"CPU {idle * 1e3:.0f} ms unrelayed, {relayed * 1e3:.0f} ms relayed → "
        f"{extra / max(got, 1) * 1e6:.1f} µs per packet, {extra / max(messages, 1) * 1e6:.0f} µs "
        f"per message (sending + receiving pod)"
    )


def main() -> None:
    per_burst = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    bursts = min(int(sys.argv[2]) if len(sys.argv) > 2 else 300, 3000)
    fps = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    if shutil.which("nats-server") is None:
        print("bench.relay_inproc needs nats-server on PATH (scripts/setup-system)")
        return
    with nats_server() as server:
        trio.run(run, server.url, per_burst, bursts, fps)


if __name__ == "__main__":
    main()
