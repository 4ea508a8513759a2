"""What relaying a track between pods costs: CPU per relayed packet on the sending and the
receiving pod, and the latency pod A → NATS → pod B adds over forwarding on pod A (issue 4).

Everything is real and on this machine: a disposable redis-server and nats-server
(``tests.services``), two pods A and B as ``python -m trio_sfu`` processes
(``tests.cluster_helpers.run_pods``), and in this process, on one Trio loop, our own clients
(``trio_sfu.client.sfu``): one video-only publisher on A, a subscriber on A (local forwarding)
and, for the second phase, a subscriber on B (every packet it gets was relayed A → B).

The publisher sends 30 frames per second of a few ~1100-byte VP8-shaped packets each, back to
back as an encoder does. Each payload carries a sequence number and ``time.monotonic_ns()``
written just before the client protects and sends it; each subscriber notes
``time.monotonic_ns()`` when its ``on_rtp`` sees the decrypted packet, so a delay is wall time
on one clock, client SRTP and loopback UDP both ways included — the same for both paths, so
relayed − local is what the relay adds. The measurement lives in this process, not the SFU.

Two phases with the same packet count and rate, each followed by the same quiet drain:

1. only the subscriber on A: pod A's CPU is ingest plus one local forward, pod B is idle;
2. both subscribers: pod A additionally hands every packet to the relay (the only difference
   from phase 1), pod B receives it from NATS and forwards it to its one subscriber.

CPU per process comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks: 10 ms, so a
phase carries thousands of packets), beside the sum of ``/proc/<pid>/task/*/schedstat``
(nanoseconds, live threads only) as a finer cross-check. Sending-pod cost = (A's phase-2 CPU −
A's phase-1 CPU) / relayed packets; receiving-pod cost = B's phase-2 CPU / relayed packets
(receiving, unpacking and forwarding to its one subscriber). Both pods also burn CPU with no
media at all (timers of the connections and of the cluster backends), so two quiet windows —
before phase 1 and after phase 2, every connection up — measure that rate, and the per-packet
figures are printed once more net of it (the schedstat column is the one to trust there: the
windows are short for 10 ms ticks). Relayed packets are counted by the pods' own relay
counters (``GET /metrics``) and cross-checked with what this process sent and received; the
same CPU accounting is shown for nats-server. The floor (``bench.floor.measure_floor``: GCM
protect + sendto of 1200 bytes) is measured in the same run, first, and every CPU figure is
also printed as a multiple of it; so is the cadence floor (``bench.floor.measure_cadence_floor``:
a bare forwarder process — blocking recv, SRTP unprotect and protect, sendto to a receiver that
sleeps — fed the same bursts at the same 30 frames a second), which is what any process that
sleeps between frames pays per packet on this machine before any work of its own.

Nothing is asserted. Packet counts and time are bounded (a phase is capped at
``MAX_PHASE_SECONDS``, the whole run at ``BUDGET_SECONDS``) and every process started here is
stopped at the end, whatever happens.

Run from the repository root (needs redis-server and nats-server on PATH)::

    .venv/bin/python -m bench.relay [packets per phase (3000)] [packets per frame (10)]
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from bench.floor import measure_cadence_floor, measure_floor
from tests.cluster_helpers import Pod, run_pods
from tests.rtc_helpers import client_certificate
from tests.services import nats_server, redis_server
from trio_sfu.client.sfu import PublisherClient, SubscriberClient, http_signal
from trio_sfu.proto.rtp import payload_offset
from trio_sfu.rtc.events import IncomingStream

FPS = 30
PAYLOAD = 1100
MAX_PHASE_SECONDS = 20.0
BUDGET_SECONDS = 100.0
IDLE_SECONDS = 4.0  # pods' CPU with every connection up and no media (twice)
WARMUP_SECONDS = 1.0  # streaming before each phase, once the phase's subscribers receive
DRAIN_SECONDS = 0.5  # quiet after each phase's last packet, inside the CPU window
ROOM = "bench"
PUBLISHER = "alice-1"

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: after the 7 bytes of VP8 payload descriptor/header: a marker, our sequence number, the
#: send time (ns, time.monotonic_ns)
MAGIC = b"RLY1"
HEAD = 7
TAG = struct.Struct("!4sIQ")
STAMP = struct.Struct("!Q")
STAMP_AT = HEAD + 8  # payload offset of the send time


# -- measurement outside the SFU ---------------------------------------------------------


class ProbeSubscriber(SubscriberClient):
    """A subscriber that notes, per tagged packet, arrival − send time (ns) the first time it
    sees the packet's sequence number."""

    def __init__(self, peer_id: str, **options: Any) -> None:
        super().__init__(peer_id, **options)
        self.delays: dict[int, int] = {}
        self.duplicates = 0
        self.untagged = 0

    def _on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        arrived = time.monotonic_ns()
        off = payload_offset(packet)
        if off < 0 or len(packet) < off + HEAD + TAG.size:
            self.untagged += 1
            return
        magic, seq, sent = TAG.unpack_from(packet, off + HEAD)
        if magic != MAGIC:
            self.untagged += 1
        elif seq in self.delays:
            self.duplicates += 1
        else:
            self.delays[seq] = arrived - sent


@dataclass
class Source:
    """Paced video from the publisher: ``per_frame`` packets back to back, ``FPS`` times a
    second, each tagged with a sequence number (counting across phases) and its send time."""

    pub: PublisherClient
    per_frame: int
    seq: int = 0
    frame: int = 0
    #: sequence numbers that opened a frame (no queueing behind the rest of the burst)
    firsts: set[int] = field(default_factory=set)

    def send_frame(self, count: int) -> None:
        t = self.pub.video
        if t is None or not t.sending or not t.media_codecs:
            raise RuntimeError("the publisher's video track is not negotiated")
        self.firsts.add(self.seq)
        send_rtp, clock = self.pub.pc.send_rtp, t.media_codecs[0].clock_rate
        timestamp = (self.frame * clock // FPS) & 0xFFFFFFFF
        for i in range(count):
            if i == 0:  # S=1 and a VP8 frame header; a keyframe every 2 s
                head = b"\x10\x00\x00\x00\x9d\x01\x2a" if self.frame % 60 == 0 else b"\x10\x01"
            else:
                head = b"\x00"
            head = head.ljust(HEAD, b"\x00")
            body = head + TAG.pack(MAGIC, self.seq, 0)
            packet = self.pub.packet(t, body + bytes(PAYLOAD - len(body)))
            packet.timestamp = timestamp
            packet.marker = i == count - 1
            data = packet.serialize()
            off = payload_offset(data)  # bytes: compiled with mypyc, it takes no bytearray
            raw = bytearray(data)
            STAMP.pack_into(raw, off + STAMP_AT, time.monotonic_ns())
            send_rtp(bytes(raw))
            self.seq += 1
        self.frame += 1

    async def stream(self, packets: int) -> range:
        """Send ``packets`` at the paced rate; the sequence numbers they carried."""
        first = self.seq
        deadline = trio.current_time()
        while self.seq < first + packets:
            self.send_frame(min(self.per_frame, first + packets - self.seq))
            deadline += 1 / FPS
            await trio.sleep_until(deadline)
        return range(first, self.seq)

    async def warm_up(self, subs: list[ProbeSubscriber], timeout: float = 20) -> None:
        """Stream until every subscriber receives, then ``WARMUP_SECONDS`` more."""
        with trio.fail_after(timeout):
            while not all(
                s.delays.keys() & range(self.seq - self.per_frame, self.seq) for s in subs
            ):
                await self.stream(self.per_frame)
        await self.stream(int(WARMUP_SECONDS * FPS * self.per_frame))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime from /proc/<pid>/stat, sum of the live threads' schedstat run time)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return ticks / CLK_TCK, ns / 1e9


async def metrics(http: httpx.AsyncClient, pod: Pod) -> dict[str, float]:
    text = (await http.get(pod.url + "/metrics", timeout=5)).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            # Series whose only label is the node's are keyed by their bare name.
            values[re.sub(r'\{node="[^"]*"\}$', "", name)] = float(value)
    return values


@dataclass
class Phase:
    seqs: range = range(0)
    seconds: float = 0.0
    #: per process name: (stat CPU s, schedstat CPU s) spent during the phase
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: per pod: relay counters' increase during the phase
    relay: dict[str, dict[str, float]] = field(default_factory=dict)


async def measure_phase(
    source: Source,
    packets: int,
    pids: dict[str, int],
    pods: dict[str, Pod],
    http: httpx.AsyncClient,
) -> Phase:
    before = {name: await metrics(http, pod) for name, pod in pods.items()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    seqs = await source.stream(packets)
    await trio.sleep(DRAIN_SECONDS)
    seconds = time.perf_counter() - t0
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    after = {name: await metrics(http, pod) for name, pod in pods.items()}
    relay = {
        name: {
            key.removeprefix("trio_sfu_relay_").removesuffix("_total"): after[name].get(key, 0.0)
            - before[name].get(key, 0.0)
            for key in after[name]
            if key.startswith("trio_sfu_relay_")
        }
        for name in pods
    }
    cpu = {n: (cpu1[n][0] - cpu0[n][0], cpu1[n][1] - cpu0[n][1]) for n in pids}
    return Phase(seqs, seconds, cpu, relay)


async def measure_idle(pids: dict[str, int]) -> Phase:
    await trio.sleep(DRAIN_SECONDS)  # the warm-up's last packets
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await trio.sleep(IDLE_SECONDS)
    seconds = time.perf_counter() - t0
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu = {n: (cpu1[n][0] - cpu0[n][0], cpu1[n][1] - cpu0[n][1]) for n in pids}
    return Phase(range(0), seconds, cpu)


# -- the run ------------------------------------------------------------------------------

@dataclass
class Result:
    per_frame: int
    idle1: Phase
    phase1: Phase
    phase2: Phase
    idle2: Phase
    local: ProbeSubscriber
    remote: ProbeSubscriber
    firsts: set[int]


async def run(packets: int, per_frame: int) -> Result:
    with redis_server() as redis, nats_server() as nats:
        async with (
            run_pods(["a", "b"], redis_url=redis.url, nats_url=nats.url) as pods,
            httpx.AsyncClient() as http,
            trio.open_nursery() as nursery,
        ):
            pids = {"A": pods["a"].proc.pid, "B": pods["b"].proc.pid}
            if nats.proc is not None:
                pids["nats"] = nats.proc.pid
            options: dict[str, Any] = {"certificate": client_certificate(), "consent_interval": 2.0}
            local = ProbeSubscriber("local-1", **options)
            remote = ProbeSubscriber("remote-1", **options)
            pub = PublisherClient(PUBLISHER, audio=False, video=True, **options)
            await nursery.start(local.connect, http_signal(pods["a"].url, "sub", ROOM, local.id))
            await local.wait_open()
            await nursery.start(pub.connect, http_signal(pods["a"].url, "pub", ROOM, pub.id))
            await pub.wait_open()
            await local.expect(f"PUB_JOIN {PUBLISHER}")
            source = Source(pub, per_frame)
            gc.collect()
            gc.freeze()  # what this process set up so far is never collected mid-phase

            await source.warm_up([local])
            idle1 = await measure_idle(pids)
            await source.warm_up([local])
            phase1 = await measure_phase(source, packets, pids, pods, http)

            await nursery.start(remote.connect, http_signal(pods["b"].url, "sub", ROOM, remote.id))
            await remote.wait_open()
            await remote.expect(f"PUB_JOIN {PUBLISHER}")
            await source.warm_up([local, remote])
            phase2 = await measure_phase(source, packets, pids, pods, http)
            idle2 = await measure_idle(pids)

            nursery.cancel_scope.cancel()
    return Result(per_frame, idle1, phase1, phase2, idle2, local, remote, source.firsts)


# -- the report ---------------------------------------------------------------------------


def pct(values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``, ns → µs."""
    return values[min(len(values) - 1, int(q * len(values)))] / 1e3 if values else float("nan")


def delays(sub: ProbeSubscriber, seqs: range, only: list[int] | None = None) -> list[int]:
    got = sub.delays
    return sorted(got[s] for s in (seqs if only is None else only) if s in got)


def report(r: Result, floor_cpu: float, cadence_cpu: float) -> None:
    p1, p2 = r.phase1, r.phase2
    n = len(p2.seqs)
    rate = FPS * r.per_frame
    print(
        f"relay pod A → nats-server → pod B, one video publisher on A: {FPS} fps × "
        f"{r.per_frame} packets of {PAYLOAD} B payload = {rate} packets/s "
        f"(≈{rate * PAYLOAD * 8 / 1e6:.1f} Mbit/s), {n} packets per phase "
        f"({p1.seconds:.1f} s / {p2.seconds:.1f} s incl. {DRAIN_SECONDS} s drain); "
        f"{os.cpu_count()} CPUs"
    )
    print("phase 1: subscriber on A only; phase 2: + subscriber on B (relayed)")
    print()
    print(
        "latency, bench send → subscriber on_rtp, µs        p50      p99      max   lost"
        "   p50 of 1st"
    )
    rows = [
        ("local   (A→sub, phase 1)", r.local, p1.seqs),
        ("local   (A→sub, phase 2)", r.local, p2.seqs),
        ("relayed (A→B→sub, phase 2)", r.remote, p2.seqs),
    ]
    for label, sub, seqs in rows:
        d = delays(sub, seqs)
        first = delays(sub, range(0), [s for s in seqs if s in r.firsts])
        print(
            f"  {label:43s} {pct(d, 0.5):8.0f} {pct(d, 0.99):8.0f} {pct(d, 1):8.0f} "
            f"{len(seqs) - len(d):6d} {pct(first, 0.5):12.0f}"
        )
    local2, relayed = delays(r.local, p2.seqs), delays(r.remote, p2.seqs)
    print(
        f"  {'added: relayed − local percentile':43s} {pct(relayed, 0.5) - pct(local2, 0.5):8.0f}"
        f" {pct(relayed, 0.99) - pct(local2, 0.99):8.0f}"
    )
    paired = [
        (r.remote.delays[s] - r.local.delays[s], s in r.firsts)
        for s in p2.seqs
        if s in r.remote.delays and s in r.local.delays
    ]
    every = sorted(d for d, _ in paired)
    firsts = sorted(d for d, first in paired if first)
    print(
        f"  {'added: same packet, relayed − local':43s} {pct(every, 0.5):8.0f} "
        f"{pct(every, 0.99):8.0f} {pct(every, 1):8.0f} {'':6s} {pct(firsts, 0.5):12.0f}"
    )
    print("  (1st = the first packet of each frame: no queueing behind the rest of its burst)")
    extra = {
        f"{sub.id} {k}": v
        for sub in (r.local, r.remote)
        for k, v in (("duplicates", sub.duplicates), ("untagged", sub.untagged))
        if v
    }
    if extra:
        print(f"  received besides: {extra}")
    print()

    sent_a = p2.relay["a"].get("packets_sent", 0.0)
    msgs_a = p2.relay["a"].get("messages_sent", 0.0)
    recv_b = p2.relay["b"].get("packets_received", 0.0)
    msgs_b = p2.relay["b"].get("messages_received", 0.0)
    got_b = len(relayed)
    print(
        f"relayed packets in phase 2: bench sent {n}; A's relay sent {sent_a:.0f} in "
        f"{msgs_a:.0f} NATS messages ({sent_a / max(msgs_a, 1):.2f} packets/message); "
        f"B's relay received {recv_b:.0f} in {msgs_b:.0f}; B's subscriber got {got_b}"
    )
    problems = {
        f"{pod}.{k}": v
        for pod in ("a", "b")
        for k, v in p2.relay[pod].items()
        if k in ("dropped", "malformed", "overflow") and v
    }
    phase1_relay = p1.relay["a"].get("packets_sent", 0.0)
    if problems or phase1_relay:
        print(
            f"  relay counters to note: {problems or ''} phase-1 packets sent by A: "
            f"{phase1_relay:.0f}"
        )
    print()

    def cpu_row(label: str, stat_s: float, sched_s: float, packets: float) -> None:
        if packets <= 0:
            print(f"  {label:50s} (no packets)")
            return
        us, us_sched = stat_s / packets * 1e6, sched_s / packets * 1e6
        print(
            f"  {label:50s} {us:7.1f} {us_sched:9.1f} {us / floor_cpu:8.1f}x"
            f" {us_sched / cadence_cpu:10.1f}x"
        )

    tick_us = 1e6 / CLK_TCK / max(n, 1)
    print(
        f"CPU µs per packet                                     stat schedstat  stat/floor"
        f"  sched/cadence   (one 10 ms tick = {tick_us:.1f} µs per packet here)"
    )
    a1, a2, b2 = p1.cpu["A"], p2.cpu["A"], p2.cpu["B"]

    def net(cpu: tuple[float, float], idle: Phase, name: str, seconds: float) -> tuple[float, ...]:
        """``cpu`` less what the same process burns idle over as many seconds."""
        rate = idle.cpu[name]
        return tuple(c - r / idle.seconds * seconds for c, r in zip(cpu, rate, strict=True))

    cpu_row("A, phase 1: ingest + 1 local forward", a1[0], a1[1], len(p1.seqs))
    cpu_row("  net of A's idle CPU (idle 1)", *net(a1, r.idle1, "A", p1.seconds), len(p1.seqs))
    cpu_row("A, phase 2: ingest + 1 local forward + relay", a2[0], a2[1], n)
    cpu_row("sending pod A: (phase 2 − phase 1) / relayed", a2[0] - a1[0], a2[1] - a1[1], sent_a)
    cpu_row("receiving pod B: phase 2 / relayed (+1 forward)", b2[0], b2[1], recv_b)
    cpu_row("  net of B's idle CPU (idle 2)", *net(b2, r.idle2, "B", p2.seconds), recv_b)
    if sent_a > 0 and recv_b > 0 and a1[1] > 0 and p1.seqs:
        local = a1[1] / len(p1.seqs)  # a room on one pod: ingest + its local forward
        print(
            f"  per relayed packet ÷ A's phase 1 per packet (the same room on one pod, same"
            f" rate; schedstat): sending pod {(a2[1] - a1[1]) / sent_a / local:.2f},"
            f" receiving pod {b2[1] / recv_b / local:.2f}"
        )
    if "nats" in p1.cpu:
        n1, n2 = p1.cpu["nats"], p2.cpu["nats"]
        cpu_row("nats-server: (phase 2 − phase 1) / relayed", n2[0] - n1[0], n2[1] - n1[1], sent_a)
    if msgs_a and msgs_b:
        per_message = [
            ("A", (a2[1] - a1[1]) / msgs_a),
            ("B", b2[1] / msgs_b),
            ("B net of idle 2", net(b2, r.idle2, "B", p2.seconds)[1] / msgs_b),
        ]
        if "nats" in p1.cpu:
            per_message.append(("nats-server", (p2.cpu["nats"][1] - p1.cpu["nats"][1]) / msgs_a))
        print(
            "  per NATS message (schedstat): "
            + ", ".join(f"{name} {cpu * 1e6:.0f} µs" for name, cpu in per_message)
        )
    for label, idle in (
        ("idle 1 (before phase 1: pub + sub on A)", r.idle1),
        ("idle 2 (after phase 2: + sub on B)", r.idle2),
    ):
        rates = ", ".join(
            f"{name} {stat / idle.seconds * 1e3:.1f} ({sched / idle.seconds * 1e3:.1f})"
            for name, (stat, sched) in idle.cpu.items()
        )
        print(f"  {label}, CPU ms/s stat (schedstat): {rates}")
    print(
        f"  (no media for {IDLE_SECONDS:.0f} s, connections up; at {rate} packets/s, "
        f"1 ms/s = {1e3 / rate:.1f} µs per packet)"
    )
    print(f"floor (protect GCM + sendto 1200 B, same run): {floor_cpu:.2f} µs CPU")
    print(
        f"cadence floor (a bare forwarder process: blocking recv, SRTP unprotect + protect, sendto"
        f" to a sleeping receiver; {FPS} bursts/s of {r.per_frame}, same"
        f" run): {cadence_cpu:.2f} µs CPU"
    )


def main() -> None:
    packets = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    per_frame = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    packets = max(per_frame, min(packets, int(MAX_PHASE_SECONDS * FPS * per_frame)))
    missing = [b for b in ("redis-server", "nats-server") if shutil.which(b) is None]
    if missing:
        print(f"bench.relay needs {' and '.join(missing)} on PATH (scripts/setup-system)")
        return
    floor_cpu, _floor_wall = measure_floor()  # first, while nothing else of ours runs
    cadence_cpu = measure_cadence_floor(per_frame, FPS)

    async def bounded() -> Result | None:
        with trio.move_on_after(BUDGET_SECONDS):
            return await run(packets, per_frame)
        return None

    try:
        result = trio.run(bounded)
    except Exception:
        print("bench.relay failed:")
        traceback.print_exc()
        return
    if result is None:
        print(f"bench.relay gave up after {BUDGET_SECONDS:.0f} s")
        return
    report(result, floor_cpu, cadence_cpu)


if __name__ == "__main__":
    main()
