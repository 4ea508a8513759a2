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

With ``--rounds`` it also counts, per burst of each phase, Trio's scheduling rounds (I/O
waits), the ones that slept (a wake-up of the process) and the task steps, through a Trio
instrument — which costs CPU itself, so take the CPU figures from a run without it.

Nothing is asserted; the stream is bounded. Run from the repository root (needs nats-server)::

    .venv/bin/python -m bench.relay_inproc [packets per burst (10)] [bursts (300)] [fps (30)]
        [--rounds]
"""

from __future__ import annotations

import resource
import shutil
import sys
from collections import Counter

import trio

from tests.aio.test_nats_bus import pods
from tests.services import nats_server

PACKET = bytes(1200)


class Rounds(trio.abc.Instrument):
    """Counts Trio's rounds (one I/O wait each), those that may sleep, and task steps."""

    def __init__(self) -> None:
        self.rounds = self.sleeps = 0
        self.steps: Counter[str] = Counter()

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1
        self.sleeps += timeout > 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1

    def take(self) -> tuple[int, int, Counter[str]]:
        taken = self.rounds, self.sleeps, self.steps
        self.rounds = self.sleeps = 0
        self.steps = Counter()
        return taken


def show_rounds(label: str, taken: tuple[int, int, Counter[str]], bursts: int) -> None:
    rounds, sleeps, steps = taken
    print(
        f"  {label}: per burst {rounds / bursts:.2f} Trio rounds, {sleeps / bursts:.2f} of them "
        f"may sleep, {steps.total() / bursts:.2f} task steps"
    )
    for name, count in steps.most_common(6):
        print(f"    {count / bursts:5.2f} {name}")


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


async def run(
    url: str, per_burst: int, bursts: int, fps: float, rounds: Rounds | None = None
) -> None:
    async with pods(url, "pod-a", "pod-b") as (a, b):
        send = a.relay.sender("alice-1", "video-1")
        got = 0

        def on_packet(packet: bytes, now: float) -> None:
            nonlocal got
            got += 1

        await trio.sleep(0.5)
        if rounds is not None:
            rounds.take()
        c0 = cpu_seconds()
        await stream(send, per_burst, bursts, fps)
        idle = cpu_seconds() - c0
        idle_rounds = rounds.take() if rounds is not None else None
        async with b.relay.subscribe("pod-a", "alice-1", "video-1", on_packet):
            with trio.fail_after(5):
                while not a.relay.wanted("alice-1", "video-1"):
                    await trio.sleep(0.01)
            await stream(send, per_burst, min(bursts, int(fps)), fps)  # warm-up
            got = 0
            messages0 = a.relay.counters.messages_sent
            if rounds is not None:
                rounds.take()
            c0 = cpu_seconds()
            await stream(send, per_burst, bursts, fps)
            relayed = cpu_seconds() - c0
            relayed_rounds = rounds.take() if rounds is not None else None
            messages = a.relay.counters.messages_sent - messages0
    extra = relayed - idle
    print(
        f"{per_burst} packets × {bursts} bursts at {fps:g}/s ({per_burst * fps:g} packets/s): "
        f"B got {got} of {per_burst * bursts} in {messages} NATS messages; "
        f"CPU {idle * 1e3:.0f} ms unrelayed, {relayed * 1e3:.0f} ms relayed → "
        f"{extra / max(got, 1) * 1e6:.1f} µs per packet, {extra / max(messages, 1) * 1e6:.0f} µs "
        f"per message (sending + receiving pod)"
    )
    if idle_rounds is not None and relayed_rounds is not None:
        show_rounds("unrelayed", idle_rounds, bursts)
        show_rounds("relayed", relayed_rounds, bursts)


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg != "--rounds"]
    rounds = Rounds() if "--rounds" in sys.argv[1:] else None
    per_burst = int(args[0]) if len(args) > 0 else 10
    bursts = min(int(args[1]) if len(args) > 1 else 300, 3000)
    fps = float(args[2]) if len(args) > 2 else 30.0
    if shutil.which("nats-server") is None:
        print("bench.relay_inproc needs nats-server on PATH (scripts/setup-system)")
        return
    with nats_server() as server:
        instruments = [rounds] if rounds is not None else []
        trio.run(run, server.url, per_burst, bursts, fps, rounds, instruments=instruments)


if __name__ == "__main__":
    main()
