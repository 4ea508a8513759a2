"""trio-sfu side by side with Janus (issue 10): server CPU per delivered packet, same load.

Both servers run in one run, one after the other per N, each pinned to the same core (the
first allowed one; Janus's threads inherit the affinity), each started fresh per scenario,
with the same load from this process pinned to the other core(s): one publisher (VP8-shaped
RTP at 1.2 Mbit/s + Opus 50/s, ``trio_sfu.client.load``'s pacing) and N subscribers on our
own client stack that decrypt and count, never decode (``bench/janus_client.py``).

Janus: Debian's ``janus`` (1.1.x), VideoRoom plugin, HTTP transport, with ``event_loops = 1``
— its best one-core configuration: every handle served by one shared GLib loop thread instead
of a thread per handle — and ``ice_lite = true``, as trio-sfu is lite. libnice never gathers
loopback addresses, so everything runs inside a private network namespace (``tests/netns.py``:
``unshare --net`` + a veth pair ``v0`` 198.18.0.1 / ``v1`` 198.18.0.2, RFC 2544 addresses no
packet can leave): both servers take media on 198.18.0.1 (Janus gathers on ``v0`` only, via
``ice_enforce_list``), the clients bind 198.18.0.2, HTTP stays on the namespace's own lo.
The configuration is written to a temporary folder (:func:`write_janus_config`) with only the
VideoRoom plugin and the HTTP transport linked in, so Janus loads nothing else.

Figures per N: server CPU over a window of steady media (``/proc/<pid>/stat`` utime + stime of
all threads, read at the window's edges), RTP packets the subscribers decrypted in that window,
CPU µs per delivered packet for each server and the ratio trio-sfu / Janus (< 1: trio-sfu is
cheaper). Loss and added latency (send stamp → decrypt, one clock) as a check that both
servers delivered the same media.

Needs: root (or CAP_SYS_ADMIN, for the namespace), ``unshare`` and ``ip``, and Janus:
``apt-get install -y janus``. Nothing is installed here; without Janus it says so and exits 0
(CI does not run it). Run from the repository root::

    .venv/bin/python -m bench.janus [--sizes 5 10 20 50] [--window 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.janus_client import ROOM, Result, run
from bench.pod import DEMO_LINE, cores, pinned

REPO = Path(__file__).resolve().parent.parent
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
JANUS_HTTP_PORT = 8088
SERVER_ADDRESS = "198.18.0.1"  # tests/netns.py ADDRESS_A, on v0
CLIENT_ADDRESS = "198.18.0.2"  # ADDRESS_B, on v1
BITRATE = 1_200_000


def janus_missing() -> str | None:
    """Why Janus cannot be run here, or None."""
    if shutil.which("janus") is None:
        return "janus not found: install Debian's package (apt-get install -y janus)"
    for name in ("plugins/libjanus_videoroom.so", "transports/libjanus_http.so"):
        if not (JANUS_LIB / name).exists():
            return f"{JANUS_LIB / name} not found (Debian package janus)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux / iproute2)"
    return None


def write_janus_config(folder: Path, debug_level: int = 3) -> None:
    """janus.jcfg, the HTTP transport and a VideoRoom room, and plugin/transport folders
    holding only those two modules (Janus loads every module it finds in its folders)."""
    for sub, module in (("plugins", "plugins/libjanus_videoroom.so"),
                        ("transports", "transports/libjanus_http.so")):
        (folder / sub).mkdir()
        (folder / sub / Path(module).name).symlink_to(JANUS_LIB / module)
    for sub in ("events", "loggers"):
        (folder / sub).mkdir()
    (folder / "janus.jcfg").write_text(f"""\
general: {{
    configs_folder = "{folder}"
    plugins_folder = "{folder}/plugins"
    transports_folder = "{folder}/transports"
    events_folder = "{folder}/events"
    loggers_folder = "{folder}/loggers"
    debug_level = {debug_level}             # 3: warnings and errors only, nothing per packet
    session_timeout = 0         # the bench's long poll keeps it alive anyway
    event_loops = 1             # one shared loop thread for all handles (not one each)
}}
certificates: {{}}              # a self-signed DTLS certificate generated at start
media: {{
    ipv6 = false
    rtp_port_range = "20000-40000"
}}
nat: {{
    nice_debug = {"true" if debug_level >= 7 else "false"}
    ice_lite = true             # as trio-sfu: the clients are the controlling agents
    ice_enforce_list = "v0"     # gather on the veth end only (libnice skips lo anyway)
}}
plugins: {{}}
transports: {{}}
loggers: {{}}
events: {{ broadcast = false }}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""\
general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    ip = "127.0.0.1"
    port = {JANUS_HTTP_PORT}
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text(f"""\
general: {{}}
room-{ROOM}: {{
    description = "bench"
    publishers = 1
    bitrate = 2000000           # REMB cap above the publisher's 1.2 Mbit/s
    fir_freq = 0                # the publisher sends a keyframe every 2 s on its own
    audiocodec = "opus"
    videocodec = "vp8"
    transport_wide_cc_ext = true
}}
""")


class Janus:
    def __init__(self, folder: Path, cpus: set[int] | None) -> None:
        self.log = open(folder / "janus.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["janus", "-F", str(folder), "-C", str(folder / "janus.jcfg"), "-o"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pinned(cpus),
        )
        self.url = f"http://127.0.0.1:{JANUS_HTTP_PORT}/janus"
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/info", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"janus did not answer on {self.url}; see {self.log.name}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Janus's clean shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class TrioSfu:
    def __init__(self, cpus: set[int] | None) -> None:
        argv = [
            sys.executable, "-m", "trio_sfu",
            "--http-host", "127.0.0.1", "--http-port", "0",
            "--udp-host", SERVER_ADDRESS, "--udp-port", "0",
            "--log-level", "warning",
            # Every client is one address here: the per-address join limit (10/s) would
            # answer 429 past N ≈ 60; Janus has no such limit.
            "--max-joins-per-ip", "1000",
            "--max-members-per-room", "1000",  # 200 by default: N = 200 + the publisher
            "--max-half-open-per-ip", "1000",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=REPO, preexec_fn=pinned(cpus))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = DEMO_LINE.search(line)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"trio-sfu did not start: {line!r}")
        self.url = match.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def scenario(kind: str, n: int, folder: Path, server_cpus: set[int] | None,
             args: argparse.Namespace) -> Result:
    server: Janus | TrioSfu = Janus(folder, server_cpus) if kind == "janus" else TrioSfu(
        server_cpus)
    try:
        time.sleep(0.5)  # start-up work off the books
        return run(kind, server.url, server.proc.pid, n, host=CLIENT_ADDRESS,
                   bitrate=args.bitrate, warmup=args.warmup, window=args.window)
    finally:
        server.stop()
        if isinstance(server, Janus) and args.keep_log:
            shutil.copy(folder / "janus.log", args.keep_log)


def show(r: Result) -> str:
    return (f"  {r.server:>8}: {r.connected}/{r.subscribers} subs, delivered "
            f"{r.delivered / r.window:,.0f} pkt/s ({r.delivered} in {r.window:.0f} s; publisher "
            f"sent {r.sent / r.window:.0f}/s), CPU {r.cpu_percent:.1f} % "
            f"(ticks: {100 * r.cpu_ticks / r.window:.1f} %), "
            f"{r.us_per_packet:.2f} µs/pkt, loss {100 * r.loss:.2f} %, "
            f"latency p50 {r.p50_ms} p99 {r.p99_ms} ms, UDP drops: rcvbuf {r.client_drops}, "
            f"sndbuf {r.send_drops}")


def allow_local_sources() -> None:
    """Inside the namespace only: accept datagrams whose source is one of our own addresses
    on a non-lo interface. libnice sends out of ``v0``, so a packet from 198.18.0.1 arrives
    on ``v1``, and the kernel drops such "martians" by default (ip-sysctl: accept_local,
    rp_filter); trio-sfu's socket goes through lo and never needed this."""
    for device in ("all", "default", "v0", "v1"):
        for knob, value in (("accept_local", "1"), ("rp_filter", "0")):
            Path(f"/proc/sys/net/ipv4/conf/{device}/{knob}").write_text(value)


def inside(args: argparse.Namespace) -> int:
    allow_local_sources()
    server_cpus, client_cpus = cores()
    if server_cpus is None:
        print("only one core: servers and clients share it (figures are not comparable)")
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    print(f"servers on CPU {server_cpus}, clients on {client_cpus}; 1 publisher "
          f"({args.bitrate / 1e6:.1f} Mbit/s VP8-shaped + Opus), {args.warmup:.0f} s warm-up, "
          f"{args.window:.0f} s measured", flush=True)
    rows: list[tuple[Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix="bench-janus-") as tmp:
        folder = Path(tmp)
        write_janus_config(folder, args.janus_debug)
        for i, n in enumerate(args.sizes):
            # Alternate the order so a drift in the machine's load does not favour one side.
            order = ("trio-sfu", "janus") if i % 2 == 0 else ("janus", "trio-sfu")
            got = {kind: scenario(kind, n, folder, server_cpus, args) for kind in order}
            trio_r, janus_r = got["trio-sfu"], got["janus"]
            print(f"N = {n}", flush=True)
            print(show(trio_r), flush=True)
            print(show(janus_r), flush=True)
            rows.append((trio_r, janus_r))
    print()
    print("| N | trio-sfu µs/pkt | Janus µs/pkt | ratio trio-sfu / Janus | delivered pkt/s "
          "(trio-sfu / Janus) | CPU % (trio-sfu / Janus) | loss (trio-sfu / Janus) | "
          "latency p50/p99 ms (trio-sfu; Janus) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for t, j in rows:
        print(f"| {t.subscribers} | {t.us_per_packet:.1f} | {j.us_per_packet:.1f} | "
              f"{t.us_per_packet / j.us_per_packet:.2f} | {t.delivered / t.window:,.0f} / "
              f"{j.delivered / j.window:,.0f} | {t.cpu_percent:.1f} / {j.cpu_percent:.1f} | "
              f"{100 * t.loss:.2f} % / {100 * j.loss:.2f} % | {t.p50_ms}/{t.p99_ms}; "
              f"{j.p50_ms}/{j.p99_ms} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[5, 10, 20, 50],
                        help="subscriber counts (default 5 10 20 50)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured (8)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before (3)")
    parser.add_argument("--bitrate", type=int, default=BITRATE, help="video bit/s (1.2M)")
    parser.add_argument("--keep-log", metavar="PATH", help="copy Janus's log here at the end")
    parser.add_argument("--janus-debug", type=int, default=3, metavar="0-7",
                        help="Janus's debug_level (3; more only to debug the set-up)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every server started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.inside:
        return inside(args)
    missing = janus_missing()
    if missing is not None:
        print(f"bench.janus skipped: {missing}")
        return 0
    argv = [sys.executable, "-m", "tests.netns", "--", sys.executable, "-m", "bench.janus",
            "--inside", *sys.argv[1:]]
    return subprocess.run(argv, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
