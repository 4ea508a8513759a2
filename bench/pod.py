"""A real pod measured end to end with ``trio-sfu load`` (issue 10), beside the floor measured in
the same run the same way.

The server is ``python -m trio_sfu`` pinned to one core (``os.sched_setaffinity``), the load
tester ``python -m trio_sfu load`` (our own client stack, real ICE/DTLS/SRTP/SCTP) pinned to
the other. Scenarios: one room with one publisher (VP8-shaped 1.5 Mbit/s video + Opus 50/s)
and N = 10, 50, 100, 200, 400 subscribers; 20 rooms × (1 publisher + 5 subscribers); and N
idle subscribers (no publisher) for the memory each connected peer costs.

Per scenario, from the server's ``/proc/<pid>/stat`` (utime + stime) and its ``/metrics``
(``trio_sfu_udp_datagrams_out_total``), sampled every 0.5 s by this process over the media
phase (from the first to the last half-second whose outbound rate is ≥ 30 % of the peak;
``/metrics`` is scraped at the phase's ends but not inside it, where its own cost would count):
server CPU %, outbound packets/s and CPU µs per outbound packet; from the load tester's JSON:
loss, added latency p50/p99 (send time in the payload → subscriber's decrypt, one monotonic
clock) and POST → data channel open p50/p99.

The floor, per scenario, is measured the same way: this process pinned to the server's core
protects (pylibsrtp AEAD_AES_128_GCM) and sends with a raw non-blocking ``sendto`` each
incoming packet to as many loopback sockets as the pod sends it to, at the pod's input rate,
while a separate process on the other core drains those sockets — so the kernel's loopback
delivery is charged the same way as the pod's. pod − floor is the pod's own work per packet.

``--source DIR`` runs the server from another source tree (e.g. an export of an older commit:
``git archive <rev> | tar -x -C DIR``) with the same load tester, for before/after figures.
Figures, not asserts; every process started here is stopped at the end.

``--saturate N …``: control at saturation, per N — 1 publisher → N subscribers that count
without decrypting (``trio-sfu load --sink``) fill the server's core, beside a measured room
(1 publisher → 10 decrypting subscribers: loss per subscriber, latency) and a probe that
sends a valid consent check every 100 ms and joins a subscriber every 1.5 s: consent RTT
p50/p99/max and unanswered checks, HTTP POST → 201 p50/p99, the loss spread, where the server
dropped (docs/benchmarks.md, "Control at saturation").

Run from the repository root: ``.venv/bin/python -m bench.pod [--quick] [--source DIR]``
(``--idle N``: only the idle-memory figure, N subscribers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

from bench.floor import gcm_session, rtp_packets

REPO = Path(__file__).resolve().parent.parent
DEMO_LINE = re.compile(r"trio-sfu: demo at (http://127\.0\.0\.1:\d+/)")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DURATION = 8.0
#: Admission limits lifted for a load tester on one address (figures, not a policy test).
LIMITS = (
    "--max-joins-per-ip", "1000", "--max-joins", "1000", "--max-half-open-per-ip", "100000",
    "--max-half-open", "100000", "--max-members-per-room", "100000",
)  # fmt: skip
#: The load of one publisher: ≈ 30 frames/s × 6 video packets + 50 audio packets.
INPUT_RATE = 230


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(server core, client cores): the first allowed core and the rest; None if only one."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return {allowed[0]}, set(allowed[1:])


def pinned(cpus: set[int] | None) -> Any:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return pin


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (proc(5) 14, 15)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def packets_out(self) -> float | None:
        return self.datagrams()[1]

    def datagrams(self) -> tuple[float | None, float | None]:
        """(datagrams in, datagrams out) of the media socket so far, from ``/metrics``."""
        try:
            text = httpx.get(self.url + "metrics", timeout=2).text
        except httpx.HTTPError:
            return None, None
        got: dict[str, float] = {}
        for line in text.splitlines():
            for name in ("trio_sfu_udp_datagrams_in_total", "trio_sfu_udp_datagrams_out_total"):
                if line.startswith(name):  # {node="..."} value
                    got[name] = float(line.rsplit(" ", 1)[1])
        return got.get("trio_sfu_udp_datagrams_in_total"), got.get(
            "trio_sfu_udp_datagrams_out_total"
        )

    def udp_counters(self) -> dict[str, float]:
        """The media socket's counters from ``/metrics`` (``trio_sfu_udp_*``), and ``kernel
        drops``: datagrams the kernel dropped at the server's full receive buffers (the last
        column of ``/proc/net/udp`` for the server's sockets)."""
        out: dict[str, float] = {}
        try:
            text = httpx.get(self.url + "metrics", timeout=5).text
        except httpx.HTTPError:
            text = ""
        for line in text.splitlines():
            if line.startswith("trio_sfu_udp_"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                out[name.removeprefix("trio_sfu_udp_")] = float(line.rsplit(" ", 1)[1])
        inodes = set()
        fds = Path(f"/proc/{self.proc.pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        drops = 0
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as f:
                for row in f.read().splitlines()[1:]:
                    cols = row.split()
                    if cols[9] in inodes:
                        drops += int(cols[-1])
        out["kernel drops"] = drops
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def start_server(source: Path | None, cpus: set[int] | None) -> Server:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    argv = [
        sys.executable, "-m", "trio_sfu",
        "--http-host", "127.0.0.1", "--http-port", "0",
        "--udp-host", "127.0.0.1", "--udp-port", "0",
        "--log-level", "warning",
        # One load tester joins hundreds of clients from one address in a few seconds: the
        # admission limits (10 joins/s per address, 200 members per room) would refuse most.
        *LIMITS,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=source or REPO,
        env=env,
        preexec_fn=pinned(cpus),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = DEMO_LINE.search(line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return Server(proc, match.group(1))


@dataclass
class Sampler:
    """(time, server CPU s, outbound datagrams, RSS, inbound datagrams) every 0.5 s, in a
    thread: CPU and RSS from ``/proc``, the datagram counters from ``GET /metrics``.

    A scrape costs the pod CPU of its own (≈ 2-4 ms: the HTTP request, then the exposition;
    docs/benchmarks.md, "Cost of a scrape"), which the figures would charge to its packets.
    So with ``quiet = (rate, seconds)`` /metrics is not scraped for ``seconds`` once the
    outbound rate reached ``rate`` (the media phase began): the window's first and last
    samples are scraped, the inside of the window is not (``cpu`` goes on every 0.5 s).
    Without it (``--saturate``, whose "GET /metrics not answered within 2 s" is a figure of
    its own, and the idle-memory run) every sample is scraped."""

    server: Server
    quiet: tuple[float, float] | None = None
    samples: list[tuple[float, float, float, int, float]] = field(default_factory=list)
    #: (time, server CPU s, whether /metrics answered within 2 s, None when not scraped):
    #: every sample, answered or not
    cpu: list[tuple[float, float, bool | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    #: the index in ``samples`` of the quiet window's first sample (media already flowing)
    quiet_from: int | None = None

    def run(self) -> None:
        quiet_until: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if quiet_until is not None and now < quiet_until:
                try:
                    self.cpu.append((now, self.server.cpu_seconds(), None))
                except OSError:
                    return
                self._stop.wait(min(0.5, quiet_until - now))
                continue
            into, out = self.server.datagrams()
            try:
                sample = (time.monotonic(), self.server.cpu_seconds(), out, self.server.rss(), into)
            except OSError:
                return
            answered = out is not None and into is not None
            self.cpu.append((sample[0], sample[1], answered))
            if out is not None and into is not None:
                if self.quiet is not None and quiet_until is None and self.samples:
                    last = self.samples[-1]
                    if (out - last[2]) / (sample[0] - last[0]) >= self.quiet[0]:
                        quiet_until = sample[0] + self.quiet[1]
                        self.quiet_from = len(self.samples)
                self.samples.append(sample)  # type: ignore[arg-type]
            self._stop.wait(0.5)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def steady(self) -> tuple[float, float, float] | None:
        """(seconds, CPU s, packets out) over the media phase.

        With ``quiet``: the quiet window itself, from the sample that found the media
        flowing to the next one (both inside the media phase, nothing scraped between).
        The interval before it holds the ramp: the last joins' CPU (DTLS, SCTP) with a
        fraction of a second's packets, which put 1-4 µs on every packet of a 5 s run.
        Otherwise from the first to the last sample interval whose outbound rate is at least
        30 % of the peak (a client catching up in bursts stays inside it)."""
        s = self.samples
        if self.quiet_from is not None and self.quiet_from + 1 < len(s):
            first, last = s[self.quiet_from], s[self.quiet_from + 1]
            return last[0] - first[0], last[1] - first[1], last[2] - first[2]
        rates = [((b[2] - a[2]) / (b[0] - a[0]), i) for i, (a, b) in enumerate(pairwise(s))]
        if not rates:
            return None
        peak = max(r for r, _ in rates)
        if peak <= 0:
            return None
        good = [i for r, i in rates if r >= 0.3 * peak]
        first, last = s[good[0]], s[good[-1] + 1]
        return last[0] - first[0], last[1] - first[1], last[2] - first[2]


def run_load(url: str, cpus: set[int] | None, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_sfu",
            "load",
            "--url",
            url,
            "--no-progress",
            "--json",
            "-",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=pinned(cpus),
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"load failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


_DRAINER = textwrap.dedent(
    """
    import selectors, socket, sys
    n = int(sys.argv[1])
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    sel.register(sys.stdin, selectors.EVENT_READ)
    buf = bytearray(4096)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                sys.exit(0)
            try:
                while True:
                    key.fileobj.recv_into(buf)
            except BlockingIOError:
                pass
    """
)


def measure_floor(
    fanout: int,
    input_rate: float,
    seconds: float,
    server: set[int] | None,
    clients: set[int] | None,
    size: int = 1100,
) -> float:
    """CPU µs per outbound packet: per input packet, GCM protect + raw sendto to each of
    ``fanout`` loopback sockets drained by a process on the client core, at ``input_rate``."""
    drainer = subprocess.Popen(
        [sys.executable, "-c", _DRAINER, str(fanout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(clients),
    )
    before = os.sched_getaffinity(0)
    try:
        assert drainer.stdout is not None
        ports = [int(p) for p in drainer.stdout.readline().split()]
        if server:
            os.sched_setaffinity(0, server)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
        sessions = [gcm_session() for _ in range(fanout)]
        packets = rtp_packets(int(input_rate * seconds) + 1, size=size)
        dests = [("127.0.0.1", p) for p in ports]
        sent = 0
        interval = 1 / input_rate
        start = time.monotonic()
        c0 = time.process_time()
        for i, packet in enumerate(packets):
            for session, dest in zip(sessions, dests, strict=True):
                try:
                    sock.sendto(session.protect(packet), dest)
                except BlockingIOError:
                    pass
                sent += 1
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        cpu = time.process_time() - c0
        sock.close()
        return cpu / sent * 1e6
    finally:
        os.sched_setaffinity(0, before)
        if drainer.stdin is not None:
            drainer.stdin.close()
        drainer.wait(10)


@dataclass
class Row:
    name: str
    subscribers: int
    out_rate: float
    cpu_percent: float
    us_per_packet: float
    floor_us: float
    loss: float
    p50_ms: float | None
    p99_ms: float | None
    join_p50_ms: float | None
    join_p99_ms: float | None
    delivered_rate: float


def scenario(
    name: str,
    source: Path | None,
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
    fanout: int,
    input_rate: float,
    duration: float,
    *load_args: str,
) -> Row:
    server = start_server(source, server_cpus)
    try:
        # No scrape inside the media phase but at its ends: from the first half-second at
        # ≥ 30 % of the expected outbound rate, for the media's duration less a second.
        quiet = (0.3 * input_rate * fanout, duration - 1.0)
        with Sampler(server, quiet) as sampler:
            result = run_load(server.url, client_cpus, "--duration", str(duration), *load_args)
        steady = sampler.steady()
    finally:
        server.stop()
    seconds, cpu, out = steady if steady is not None else (1.0, 0.0, 0.0)
    floor = measure_floor(fanout, input_rate, min(4.0, duration / 2), server_cpus, client_cpus)
    return Row(
        name=name,
        subscribers=result["clients"]["subscribers"],
        out_rate=out / seconds,
        cpu_percent=100 * cpu / seconds,
        us_per_packet=cpu / out * 1e6 if out else float("nan"),
        floor_us=floor,
        loss=result["packets"]["loss"],
        p50_ms=result["latency_ms"]["p50"],
        p99_ms=result["latency_ms"]["p99"],
        join_p50_ms=result["join_ms"]["p50"],
        join_p99_ms=result["join_ms"]["p99"],
        delivered_rate=result["packets"]["delivered"] / duration,
    )


def idle_memory(
    source: Path | None, server_cpus: set[int] | None, client_cpus: set[int] | None, peers: int
) -> float:
    """Bytes of server RSS per connected idle subscriber (no media)."""
    server = start_server(source, server_cpus)
    try:
        time.sleep(1.0)
        base = server.rss()
        with Sampler(server) as sampler:
            result = run_load(
                server.url,
                client_cpus,
                "--publishers",
                "0",
                "--subscribers",
                str(peers),
                "--duration",
                "4",
            )
        if result["clients"]["connected"] != peers:
            # Fewer peers than divided by would understate the figure (as the admission
            # limits once did: 67 of 200 connected read as 70 KiB instead of 168).
            raise RuntimeError(f"idle memory: {result['clients']} ({result['errors'][:3]})")
        peak = max((s[3] for s in sampler.samples), default=base)
    finally:
        server.stop()
    return (peak - base) / peers


# -- control at saturation (issue 10: "control stays responsive at saturation") -------------

#: The probe's consent checks: one every PROBE_INTERVAL s (a strict client such as aioice gives
#: up after 6 checks unanswered within 0.5 s each), answers later than LATE_ANSWER s counted.
PROBE_INTERVAL = 0.1
LATE_ANSWER = 2.0
#: The probe's HTTP joins (POST → 201), one every JOIN_INTERVAL s.
JOIN_INTERVAL = 1.5


async def _probe(url: str, seconds: float) -> dict[str, Any]:
    """A connected subscriber sending valid consent checks (RFC 7675: Binding requests with
    the session's credentials) every PROBE_INTERVAL s on its own socket, the answer matched by
    transaction id; meanwhile a fresh subscriber joins every JOIN_INTERVAL s, its POST → 201
    timed. Every time is ``time.monotonic()`` (the bench's clock too)."""
    import secrets

    import trio

    from trio_sfu.client.sfu import SubscriberClient, http_signal
    from trio_sfu.proto import stun

    checks: list[list[float | None]] = []  # [sent at, RTT or None]
    joins: list[tuple[float, float | None]] = []  # (POST at, POST → 201 s or None: failed)
    pending: dict[bytes, int] = {}
    client = SubscriberClient(f"probe-{secrets.token_hex(3)}")
    signal = http_signal(url, "sub", "probe", client.id, timeout=30.0)

    async def join_once(nursery: trio.Nursery) -> None:
        joiner = SubscriberClient(f"joiner-{secrets.token_hex(3)}")
        inner = http_signal(url, "sub", "probe-joins", joiner.id, timeout=30.0)
        at = time.monotonic()

        async def timed(offer: str) -> str:
            try:
                answer = await inner(offer)
            except Exception:
                joins.append((at, None))
                raise
            joins.append((at, time.monotonic() - at))
            return answer

        try:
            await joiner.connect(timed)
        except Exception:
            return

    async def joiner_loop(nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(JOIN_INTERVAL)
            nursery.start_soon(join_once, nursery)

    async with trio.open_nursery() as nursery:
        await nursery.start(client.connect, signal)
        await client.wait_open(CONNECT_PROBE_TIMEOUT)
        pc = client.pc
        agent = pc.ice_agent
        through = pc._received

        def received(data: bytes, addr: tuple[str, int], now: float) -> None:
            # STUN (RFC 7983: first byte 0–3) answers to our own checks are timed here; the
            # rest, the client's own consent answers included, goes on as usual.
            if len(data) >= 20 and data[0] < 4:
                index = pending.pop(data[8:20], None)
                if index is not None:
                    checks[index][1] = time.monotonic() - checks[index][0]  # type: ignore[operator]
                    return
            through(data, addr, now)

        pc._received = received  # type: ignore[method-assign]
        assert agent.remote_ufrag and agent.remote_pwd and pc.remote_address
        username = f"{agent.remote_ufrag}:{agent.local_ufrag}"
        nursery.start_soon(joiner_loop, nursery)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tid = stun.new_transaction_id()
            request = stun.binding_request(
                username=username, password=agent.remote_pwd, priority=stun.ice_priority(),
                tie_breaker=agent.tie_breaker, transaction_id=tid,
            )  # fmt: skip
            pending[tid] = len(checks)
            checks.append([time.monotonic(), None])
            pc._sock.sendto(request, pc.remote_address)
            await trio.sleep(PROBE_INTERVAL)
        await trio.sleep(LATE_ANSWER)
        nursery.cancel_scope.cancel()
    return {
        "checks": [(at, rtt if rtt is None or rtt <= LATE_ANSWER else None) for at, rtt in checks],
        "joins": joins,
    }


#: Seconds the probe may take to connect while the pod is saturated.
CONNECT_PROBE_TIMEOUT = 60.0


#: Seconds the measured room and the probe run longer than the sinks (their joins take long).
SLACK = 60.0


def probe_main(url: str, seconds: float) -> None:
    """The probe shares the client core with the load testers: as a real-time process
    (SCHED_FIFO, root only; else its figures include waits for that core) it runs as soon as
    an answer arrives, so what it times is the server's delay, not this core's queue."""
    import trio

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        print(
            "bench.pod probe: not real-time (needs root): client-core waits are included",
            file=sys.stderr,
        )

    result = trio.run(_probe, url, seconds)
    json.dump(result, sys.stdout)


def quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


@dataclass
class Saturation:
    sinks: int
    bitrate: str
    subscribers: int
    in_rate: float
    out_rate: float
    cpu_percent: float
    saturated_share: float  # of the 0.5 s intervals in the media phase, those at ≥ 95 % CPU
    checks: int
    unanswered: int
    rtt_ms: tuple[float | None, float | None, float | None]  # p50, p99, max
    joins: int
    joins_failed: int
    join_ms: tuple[float | None, float | None]  # p50, p99
    loss: float  # the measured room's
    latency_ms: tuple[float | None, float | None]  # the measured room's added latency p50, p99
    loss_spread: tuple[float | None, float | None, float | None]  # min, median, max
    sink_loss_spread: tuple[float | None, float | None, float | None]
    connected: str
    metrics_unanswered: str  # the sampler's GET /metrics not answered within 2 s
    drops: str  # where the server dropped: kernel / its own queue / full send buffer


def _spread(result: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    spread = result["subscriber_loss"]
    return spread["min"], spread["median"], spread["max"]


def saturation(
    source: Path | None,
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
    sinks: int,
    bitrate: str,
    subscribers: int,
    duration: float,
    log: Any = None,
    feedback: bool = False,
) -> Saturation:
    """At once against one server: a room of 1 publisher at ``bitrate`` → ``sinks`` subscribers
    that count without decrypting (``trio-sfu load --sink``: fan-out is what fills the server's
    core, and a decrypting subscriber costs the one-core client ≈ 4× what its packets cost the
    server), a room of 1 publisher (1.5 Mbit/s) → ``subscribers`` decrypting ones (latency, the
    loss spread), and the probe (consent checks, HTTP joins). With ``feedback`` every
    subscriber of both rooms reports as a browser does (``--feedback``): the pod then also runs
    each one's estimator on a thousand feedback packets a second per hundred subscribers."""
    server = start_server(source, server_cpus)
    try:

        def spawn(*args: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                preexec_fn=pinned(client_cpus),
            )

        load = ("trio_sfu", "load", "--url", server.url, "--no-progress", "--json", "-")
        if feedback:
            load += ("--feedback",)
        # The measured room and the probe start first and run longer, so they cover the
        # sinks' media phase whenever their joins end.
        with Sampler(server) as sampler:
            procs = [
                spawn(*load, "--room", "fair", "--identity", "fair", "--duration",
                      str(duration + SLACK), "--subscribers", str(subscribers)),
                spawn("bench.pod", "--probe", server.url, "--probe-seconds",
                      str(duration + SLACK + 10)),
            ]  # fmt: skip
            if sinks:
                procs.append(
                    spawn(*load, "--room", "heavy", "--identity", "heavy", "--sink",
                          "--duration", str(duration),
                          "--subscribers", str(sinks), "--video-bitrate", bitrate)
                )  # fmt: skip
            try:
                outs = [p.communicate(timeout=200) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.communicate(timeout=10)
        counters = server.udp_counters()
    finally:
        server.stop()
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode not in (0, 1):
            raise RuntimeError(f"{p.args!r} failed: {err[-2000:]}")
    fair = json.loads(outs[0][0])
    probe = json.loads(outs[1][0])
    heavy = json.loads(outs[2][0]) if sinks else None
    # The window: while both rooms' media runs (each load tester says when its began; the
    # first second is left out), from the sampler's intervals inside it.
    begin = max(fair["media_started_monotonic"], (heavy or fair)["media_started_monotonic"]) + 1
    end = min(fair["media_started_monotonic"] + duration + SLACK, begin - 1 + duration)
    cpu = [x for x in sampler.cpu if begin <= x[0] <= end]
    if len(cpu) < 2:
        raise RuntimeError(f"no media window: the load testers did not overlap ({begin}, {end})")
    first, last = cpu[0], cpu[-1]
    seconds = last[0] - first[0]
    busy = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in pairwise(cpu)]
    # Rates from the samples whose /metrics answered (a starved HTTP server answers none).
    s = [x for x in sampler.samples if begin <= x[0] <= end]
    in_rate = (s[-1][4] - s[0][4]) / (s[-1][0] - s[0][0]) if len(s) > 1 else float("nan")
    out_rate = (s[-1][2] - s[0][2]) / (s[-1][0] - s[0][0]) if len(s) > 1 else float("nan")
    if log is not None:
        json.dump(
            {"window": [begin, end], "samples": sampler.samples, "cpu": sampler.cpu,
             "probe": probe}, log,
        )  # fmt: skip
    inside = [c for c in probe["checks"] if first[0] <= c[0] <= last[0]]
    rtts = [c[1] for c in inside if c[1] is not None]
    joins = [j for j in probe["joins"] if first[0] <= j[0] <= last[0]]
    join_s = [j[1] for j in joins if j[1] is not None]

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    connected = f"{fair['clients']['connected']}" + (
        f" + {heavy['clients']['connected']}" if heavy else ""
    )
    return Saturation(
        sinks=sinks,
        bitrate=bitrate,
        subscribers=subscribers,
        in_rate=in_rate,
        out_rate=out_rate,
        metrics_unanswered=f"{sum(1 for x in cpu if x[2] is False)} of {len(cpu)}",
        cpu_percent=100 * (last[1] - first[1]) / seconds,
        saturated_share=sum(1 for b in busy if b >= 0.95) / len(busy),
        checks=len(inside),
        unanswered=len(inside) - len(rtts),
        rtt_ms=(ms(quantile(rtts, 0.5)), ms(quantile(rtts, 0.99)), ms(max(rtts, default=None))),
        joins=len(joins),
        joins_failed=len(joins) - len(join_s),
        join_ms=(ms(quantile(join_s, 0.5)), ms(quantile(join_s, 0.99))),
        loss=fair["packets"]["loss"],
        latency_ms=(fair["latency_ms"]["p50"], fair["latency_ms"]["p99"]),
        loss_spread=_spread(fair),
        sink_loss_spread=_spread(heavy) if heavy else (None, None, None),
        connected=connected,
        drops=" / ".join(
            f"{counters.get(k, 0):,.0f}"
            for k in ("kernel drops", "overload_dropped_total", "send_dropped_total")
        ),
    )


def print_saturation(r: Saturation) -> None:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    print(
        f"| {r.sinks} × {r.bitrate} sinks + {r.subscribers} | {r.in_rate:,.0f} / "
        f"{r.out_rate:,.0f} | {r.cpu_percent:.0f} % ({100 * r.saturated_share:.0f} %) | "
        f"{r.rtt_ms[0]} / {r.rtt_ms[1]} / {r.rtt_ms[2]} | {r.unanswered} of {r.checks} | "
        f"{r.join_ms[0]} / {r.join_ms[1]} ({r.joins}, {r.joins_failed} failed) | "
        f"{' / '.join(pct(v) for v in r.loss_spread)} | {r.latency_ms[0]} / {r.latency_ms[1]} | "
        f"{' / '.join(pct(v) for v in r.sink_loss_spread)} | {r.connected} | {r.drops} | "
        f"{r.metrics_unanswered} |",
        flush=True,
    )


SATURATION_HEADER = (
    "| load | in / out pkt/s | server CPU (share of 0.5 s ≥ 95 %) | consent RTT p50 / p99 / max"
    " ms | unanswered | HTTP join p50 / p99 ms (n) | loss % per subscriber min / median / max |"
    " media latency p50 / p99 ms |"
    " sinks' loss % min / median / max | connected | server drops: kernel / queue / send |"
    " GET /metrics > 2 s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="run the server from this source tree")
    parser.add_argument("--quick", action="store_true", help="N = 10, 50 only; shorter runs")
    parser.add_argument("--sizes", type=int, nargs="*", help="subscriber counts to run")
    parser.add_argument(
        "--idle", type=int, metavar="N", help="only the idle-memory measurement, with N subscribers"
    )
    parser.add_argument(
        "--saturate",
        type=int,
        nargs="+",
        metavar="N",
        help="control at saturation, per N: 1 publisher → N subscribers counting without "
        "decrypting (trio-sfu load --sink) beside 1 publisher → --fair-subscribers, a consent "
        "probe and HTTP joins",
    )
    parser.add_argument("--bitrate", default="1.5M", help="the sinks' publisher's video rate")
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="the subscribers send transport-cc feedback and receiver reports, as browsers "
        "do (trio-sfu load --feedback): the pod's estimator per subscriber then works (with "
        "--saturate: every subscriber of both rooms)",
    )
    parser.add_argument(
        "--fair-subscribers",
        type=int,
        default=10,
        help="subscribers of the measured room in --saturate (10)",
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="media seconds per --saturate step (20)"
    )
    parser.add_argument(
        "--log",
        metavar="PREFIX",
        help="--saturate: write each step's samples and probe times to PREFIX.N.json",
    )
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--probe-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe_main(args.probe, args.probe_seconds)
        return
    # SIGTERM unwinds like Ctrl-C, so every server and load process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_cpus, client_cpus = cores()
    if server_cpus is None:
        print("only one core: server and clients share it (figures are not comparable)")
    if args.saturate:
        print(
            f"server on CPU {server_cpus}, clients on {client_cpus}; source "
            f"{args.source or 'this tree'}; load average {os.getloadavg()[0]:.1f}"
            + ("; subscribers send feedback" if args.feedback else "")
        )
        print(SATURATION_HEADER, flush=True)
        for p in args.saturate:
            log = open(f"{args.log}.{p}.json", "w") if args.log else None  # noqa: SIM115
            print_saturation(
                saturation(
                    args.source,
                    server_cpus,
                    client_cpus,
                    p,
                    args.bitrate,
                    args.fair_subscribers,
                    args.seconds,
                    log,
                    args.feedback,
                )
            )
            if log is not None:
                log.close()
        print(f"load average {os.getloadavg()[0]:.1f}")
        return
    if args.idle:
        memory = idle_memory(args.source, server_cpus, client_cpus, args.idle)
        print(f"memory per idle connected subscriber ({args.idle} peers): {memory / 1024:.0f} KiB")
        return
    sizes = args.sizes or ([10, 50] if args.quick else [10, 50, 100, 200, 400])
    duration = 5.0 if args.quick else DURATION
    print(
        f"server on CPU {server_cpus}, clients on {client_cpus}; source "
        f"{args.source or 'this tree'}; {duration:.0f} s per run"
        + ("; subscribers send feedback" if args.feedback else "")
    )
    rows: list[Row] = []
    extra = ["--feedback"] if args.feedback else []
    for n in sizes:
        rows.append(
            scenario(
                f"1 pub → {n} subs",
                args.source,
                server_cpus,
                client_cpus,
                n,
                INPUT_RATE,
                duration,
                "--subscribers",
                str(n),
                *extra,
            )
        )
        print_row(rows[-1])
    if not args.quick:
        rows.append(
            scenario(
                "20 rooms × (1+5)",
                args.source,
                server_cpus,
                client_cpus,
                5,
                20 * INPUT_RATE,
                duration,
                "--rooms",
                "20",
                "--subscribers",
                "5",
                *extra,
            )
        )
        print_row(rows[-1])
    peers = 50 if args.quick else 200
    memory = idle_memory(args.source, server_cpus, client_cpus, peers)
    print()
    print(
        "| scenario | out pkt/s | server CPU | µs/out pkt | floor µs | pod − floor | loss |"
        " latency p50/p99 ms | join p50/p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(table_row(r))
    print(f"\nmemory per idle connected subscriber ({peers} peers): {memory / 1024:.0f} KiB")


def print_row(r: Row) -> None:
    print(
        f"  {r.name}: {r.out_rate:,.0f} out pkt/s, CPU {r.cpu_percent:.0f} %, "
        f"{r.us_per_packet:.1f} µs/pkt (floor {r.floor_us:.1f}), loss {100 * r.loss:.3f} %, "
        f"latency p50 {r.p50_ms} p99 {r.p99_ms} ms, join p50 {r.join_p50_ms} ms, "
        f"delivered {r.delivered_rate:,.0f}/s",
        flush=True,
    )


def table_row(r: Row) -> str:
    return (
        f"| {r.name} | {r.out_rate:,.0f} | {r.cpu_percent:.0f} % | {r.us_per_packet:.1f} | "
        f"{r.floor_us:.1f} | {r.us_per_packet - r.floor_us:.1f} | {100 * r.loss:.2f} % | "
        f"{r.p50_ms} / {r.p99_ms} | {r.join_p50_ms} / {r.join_p99_ms} |"
    )


if __name__ == "__main__":
    main()
