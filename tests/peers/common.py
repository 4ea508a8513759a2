"""Shared pieces of the external test peers' line protocol.

The peer scripts (``chromium_peer.py``, ``aiortc_peer.py``, ``aiortc_echo.py``) are independent
WebRTC endpoints used to prove trio-sfu against real implementations, so they import nothing from
``trio_sfu``. They talk to their parent over stdin/stdout, one JSON object per line; everything
else (logs, browser console) goes to stderr so the protocol stream can never be corrupted.

The test message stream is defined here once, from a tiny 32-bit PRNG (mulberry32) that
``chromium_page.js`` implements bit for bit: a failing message reported by the browser can be
regenerated in Python with :func:`make_message`, and ``tests/test_peer_harness.py`` checks that
both implementations agree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

WATCHDOG_GRACE = 30.0  # seconds past --timeout before a peer ends itself
EOF_GRACE = 10.0  # seconds after stdin EOF before a peer ends itself

# Send-side flow control (bytes). Chromium closes a data channel whose send buffer overflows
# (16 MiB), so senders stop above HIGH and resume on `bufferedamountlow` (set to LOW).
BUFFER_HIGH = 1 << 20
BUFFER_LOW = 256 << 10

CHANNELS = ("ordered", "unordered")

_M32 = 0xFFFFFFFF
_START = time.monotonic()
_SCRIPT = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "peer"

# The real stdout, reserved for protocol lines (see :func:`reserve_stdout`).
_protocol_out: IO[str] = sys.stdout


# --------------------------------------------------------------------------- output


def reserve_stdout() -> None:
    """Keep stdout for protocol lines only.

    A stray ``print`` from a library would break the parent's JSON parsing, so after this call
    ``sys.stdout`` points at stderr and only :func:`emit` writes to the real stdout.
    """
    global _protocol_out
    _protocol_out = sys.stdout
    sys.stdout = sys.stderr


def emit(obj: dict[str, Any]) -> None:
    """Write one protocol line; a vanished parent is not an error worth a traceback."""
    try:
        _protocol_out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        _protocol_out.flush()
    except (BrokenPipeError, ValueError):
        log("stdout closed; dropping", obj.get("type"))


def log(*parts: object) -> None:
    msg = " ".join(str(p) for p in parts)
    try:
        sys.stderr.write(f"[{_SCRIPT} {time.monotonic() - _START:7.3f}] {msg}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass


# --------------------------------------------------------------------------- input


class StdinClosed(Exception):
    """The parent closed our stdin: it has gone or wants us to stop."""


class StdinLines:
    """Reads protocol lines on a daemon thread so every wait can have a timeout.

    A blocking ``readline`` cannot be bounded portably; a thread feeding a queue can, and it also
    notices EOF while the main thread is busy driving the browser or the event loop.
    """

    _EOF = object()

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd if fd is not None else sys.stdin.fileno()
        self._queue: queue.Queue[object] = queue.Queue()
        self.closed = threading.Event()
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stdin", daemon=True)
        self._thread.start()

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once stdin reaches EOF (from the reader thread, or right now)."""
        with self._lock:
            if not self.closed.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _run(self) -> None:
        # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a buffered
        # reader holds its lock, and interpreter shutdown then aborts with a fatal error.
        buf = b""
        try:
            while chunk := os.read(self._fd, 1 << 16):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    self._parse(raw)
            self._parse(buf)
        except OSError as exc:
            log("stdin read failed:", exc)
        with self._lock:
            self.closed.set()
        self._queue.put(self._EOF)
        for cb in self._callbacks:
            try:
                cb()
            except Exception as exc:
                log("stdin close callback failed:", exc)

    def _parse(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        try:
            obj = json.loads(line)
        except ValueError:
            log("ignoring non-JSON stdin line:", line[:200])
            return
        if isinstance(obj, dict):
            self._queue.put(obj)
        else:
            log("ignoring non-object stdin line:", line[:200])

    def get(self, timeout: float) -> dict[str, Any] | None:
        """Next message, ``None`` on timeout; raises :class:`StdinClosed` at EOF."""
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is self._EOF:
            self._queue.put(item)  # stay closed for later callers
            raise StdinClosed
        assert isinstance(item, dict)
        return item

    def wait_for(self, kind: str, deadline: float) -> dict[str, Any] | None:
        """Wait for a message of ``type == kind`` until ``deadline`` (monotonic)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            msg = self.get(min(remaining, 0.5))
            if msg is None:
                continue
            if msg.get("type") == kind:
                return msg
            log("ignoring stdin message of type", msg.get("type"))


async def async_wait_for(stdin: StdinLines, kind: str, deadline: float) -> dict[str, Any] | None:
    """:meth:`StdinLines.wait_for` for asyncio peers, polling so no executor thread lingers."""
    while True:
        msg = stdin.get(0)
        if msg is not None:
            if msg.get("type") == kind:
                return msg
            log("ignoring stdin message of type", msg.get("type"))
            continue
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)


# aiortc's receive path is Python: during a data burst it falls behind, and the kernel drops
# whatever overflows the UDP socket buffer, RTP included. aiortc NACKs a lost packet only once
# and its video jitter buffer then stalls for ~512 packets (10+ s) before asking for a keyframe.
# A large buffer plus a receive window smaller than it keeps the self-check loss-free.
UDP_RECEIVE_BUFFER = 4 << 20  # the kernel caps this at net.core.rmem_max
SCTP_RECEIVE_WINDOW = 256 << 10  # aiortc advertises 1 MiB by default


def patch_aioice() -> None:
    """Make aioice gather 127.0.0.1 only (loopback traffic only), with big socket buffers.

    aioice skips 127.0.0.1 when listing host addresses (it is useless between machines) and
    would otherwise offer this host's routable addresses; it looks ``get_host_addresses`` and
    ``turn.UDP_SOCKET_BUFFER_SIZE`` up at gathering time, so replacing them there is enough.
    """
    import aioice.ice
    import aioice.turn

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = UDP_RECEIVE_BUFFER


def cap_sctp_receive_window(pc: Any) -> None:
    """Advertise SCTP_RECEIVE_WINDOW (see above); call before the association starts."""
    sctp = getattr(pc, "sctp", None)
    if sctp is not None and hasattr(sctp, "_advertised_rwnd"):
        sctp._advertised_rwnd = SCTP_RECEIVE_WINDOW


class FinalLine:
    """Emits the one final line (result/closed) from the main thread or from a watchdog.

    Watchdogs are what guarantees that a peer never hangs: Playwright calls have no timeout of
    their own and an aiortc event loop can wedge in a library, so a timer thread prints a
    failing final line and ends the process if the main flow overruns. Killing ourselves is
    enough to clean up: Playwright's driver exits with its parent and takes Chromium along.
    """

    def __init__(self, fallback: Callable[[str], dict[str, Any]]) -> None:
        self._fallback = fallback
        self._lock = threading.Lock()
        self.line: dict[str, Any] | None = None

    def finish(self, line: dict[str, Any]) -> bool:
        with self._lock:
            if self.line is not None:
                return False
            self.line = line
        emit(line)
        return True

    @property
    def exit_code(self) -> int:
        line = self.line or {}
        return 0 if line.get("ok") or line.get("type") == "closed" else 1

    def arm(self, delay: float, reason: str) -> None:
        def fire() -> None:
            log("watchdog:", reason)
            if self.finish(self._fallback(f"watchdog: {reason}")):
                os._exit(1)
            os._exit(self.exit_code)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()


# --------------------------------------------------------------------------- CLI


def parse_args(
    description: str,
    argv: list[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The CLI every peer accepts (the echo side ignores what it does not need)."""
    p = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(p)
    p.add_argument("--messages", type=int, default=200, help="data-channel messages to send")
    p.add_argument("--max-size", type=int, default=65536, help="max message size in bytes")
    p.add_argument("--seed", type=int, default=7, help="seed of the message stream")
    p.add_argument(
        "--video", action=argparse.BooleanOptionalAction, default=False,
        help="send a video track and require the echoed one to decode",
    )
    p.add_argument(
        "--datachannel", action=argparse.BooleanOptionalAction, default=True,
        help="create the 'ordered' and 'unordered' channels and run the echo check",
    )
    p.add_argument("--min-frames", type=int, default=30, help="decoded frames required")
    p.add_argument("--timeout", type=float, default=90.0, help="overall bound in seconds")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument(
        "--all-candidates", action="store_true",
        help="keep non-loopback ICE candidates in the offer (default: loopback UDP only)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging on stderr")
    args = p.parse_args(argv)
    if args.messages < 0 or not 1 <= args.max_size <= 262144:
        p.error("--messages must be >= 0 and --max-size in 1..262144")
    return args


# --------------------------------------------------------------------------- message stream


def _imul(a: int, b: int) -> int:
    return (a * b) & _M32


def message_seed(seed: int, index: int) -> int:
    """Per-message PRNG state, so any message can be regenerated without the ones before it."""
    return ((seed & _M32) ^ _imul(index + 1, 0x9E3779B1)) & _M32


def prng_words(state: int, count: int) -> tuple[int, list[int]]:
    """``count`` mulberry32 outputs from ``state``; returns (new state, words)."""
    out = []
    a = state
    for _ in range(count):
        a = (a + 0x6D2B79F5) & _M32
        t = ((a ^ (a >> 15)) * (a | 1)) & _M32
        t ^= (t + (((t ^ (t >> 7)) * (t | 61)) & _M32)) & _M32
        out.append((t ^ (t >> 14)) & _M32)
    return a, out


def message_channel(index: int) -> str:
    """Channel of message ``index``: pairs alternate so each channel gets both types."""
    return CHANNELS[(index >> 1) & 1]


def make_message(seed: int, index: int, max_size: int) -> str | bytes:
    """Message ``index`` of the stream: a str for even indices, bytes for odd ones.

    Its size is uniform in 1..max_size *bytes*; a string's UTF-8 encoding is exactly that long
    and mixes 1- to 4-byte characters (no surrogates), so multibyte handling is exercised.
    """
    state, (first,) = prng_words(message_seed(seed, index), 1)
    size = 1 + first % max_size
    if index & 1:
        _, words = prng_words(state, (size + 3) // 4)
        buf = array("I", words)
        if sys.byteorder == "big":
            buf.byteswap()  # the JS side writes little-endian words
        return buf.tobytes()[:size]
    return _make_text(state, size)


def _make_text(state: int, size: int) -> str:
    chars: list[str] = []
    remaining = size
    a = state
    while remaining > 0:
        # Inline mulberry32: this loop runs once per character.
        a = (a + 0x6D2B79F5) & _M32
        t = ((a ^ (a >> 15)) * (a | 1)) & _M32
        t ^= (t + (((t ^ (t >> 7)) * (t | 61)) & _M32)) & _M32
        r = (t ^ (t >> 14)) & _M32
        cls = r & 15
        v = r >> 4
        n = 1 if cls < 10 else 2 if cls < 13 else 3 if cls < 15 else 4
        n = min(n, remaining)
        if n == 1:
            cp = 0x20 + v % 95  # printable ASCII
        elif n == 2:
            cp = 0xA0 + v % 0x760  # skips the C1 controls
        elif n == 3:
            cp = 0x800 + v % 0xF000  # 0x800..0xFFFF minus the 0x800 surrogates
            if cp >= 0xD800:
                cp += 0x800
        else:
            cp = 0x10000 + v % 0x100000
        chars.append(chr(cp))
        remaining -= n
    return "".join(chars)


def message_plan(count: int) -> dict[str, list[int]]:
    """Indices sent on each channel, in sending order."""
    plan: dict[str, list[int]] = {name: [] for name in CHANNELS}
    for i in range(count):
        plan[message_channel(i)].append(i)
    return plan


def describe(msg: str | bytes) -> str:
    kind = "str" if isinstance(msg, str) else "bytes"
    size = len(msg.encode()) if isinstance(msg, str) else len(msg)
    return f"{kind}[{size}B]"


class EchoTally:
    """Checks one channel's echoes: in order for 'ordered', as a multiset for 'unordered'."""

    def __init__(self, name: str, ordered: bool) -> None:
        self.name = name
        self.ordered = ordered
        self.sent = 0
        self.echoed = 0
        self.mismatches = 0
        self.bytes_sent = 0
        self.first_mismatch: str | None = None
        self._expected: list[str | bytes] = []
        self._next = 0
        self._pending: Counter[str | bytes] = Counter()

    def on_sent(self, msg: str | bytes) -> None:
        self.sent += 1
        self.bytes_sent += len(msg.encode()) if isinstance(msg, str) else len(msg)
        if self.ordered:
            self._expected.append(msg)
        else:
            self._pending[msg] += 1

    def on_echo(self, msg: str | bytes) -> None:
        self.echoed += 1
        if self.ordered:
            want = self._expected[self._next] if self._next < len(self._expected) else None
            self._next += 1
            if want is not None:
                self._expected[self._next - 1] = b""  # free memory as we go
            ok = want is not None and type(want) is type(msg) and want == msg
            detail = f"echo #{self._next - 1}: got {describe(msg)}, want " + (
                describe(want) if want is not None else "nothing"
            )
        else:
            ok = self._pending[msg] > 0
            if ok:
                self._pending[msg] -= 1
                if not self._pending[msg]:
                    del self._pending[msg]
            detail = f"unexpected echo {describe(msg)}"
        if not ok:
            self.mismatches += 1
            if self.first_mismatch is None:
                self.first_mismatch = detail

    @property
    def complete(self) -> bool:
        return self.echoed >= self.sent

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "echoed": self.echoed,
            "mismatches": self.mismatches,
            "bytesSent": self.bytes_sent,
            "firstMismatch": self.first_mismatch,
        }


def datachannel_summary(tallies: dict[str, EchoTally], expected: int) -> dict[str, Any]:
    """The ``datachannel`` object of the result line (same shape as the browser's)."""
    return {
        "expected": expected,
        "sent": sum(t.sent for t in tallies.values()),
        "echoed": sum(t.echoed for t in tallies.values()),
        "mismatches": sum(t.mismatches for t in tallies.values()),
        "channels": {name: t.summary() for name, t in tallies.items()},
    }


# --------------------------------------------------------------------------- SDP


_LOOPBACK = ("127.", "::1")


def filter_candidates(sdp: str, keep_all: bool = False) -> str:
    """Keep only loopback UDP candidates so no check ever leaves the loopback interface.

    Where the default address (c=/m= port, RFC 8839 §4.2.1.1) was a dropped candidate, it is
    rewritten to the first kept one so the offer stays self-consistent.
    """
    if keep_all:
        return sdp
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    trailing = lines and lines[-1] == ""
    if trailing:
        lines.pop()
    # Split into session part + media sections.
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        kept: list[tuple[str, str]] = []  # (address, port)
        body: list[str] = []
        for line in section:
            if line.startswith("a=candidate:"):
                parts = line.split()
                if len(parts) >= 8:
                    transport, addr, port = parts[2].lower(), parts[4], parts[5]
                    if transport == "udp" and addr.startswith(_LOOPBACK):
                        kept.append((addr, port))
                        body.append(line)
                continue
            body.append(line)
        if kept:
            addrs = {a for a, _ in kept}
            c_idx = next((i for i, ln in enumerate(body) if ln.startswith("c=")), None)
            if c_idx is not None and body[c_idx].split()[-1] not in addrs:
                addr, port = kept[0]
                family = "IP6" if ":" in addr else "IP4"
                body[c_idx] = f"c=IN {family} {addr}"
                m = body[0].split(" ")
                if len(m) > 1 and m[1] != "0":
                    m[1] = port
                    body[0] = " ".join(m)
        out.extend(body)
    return eol.join(out) + (eol if trailing else "")


def result_line(
    *,
    ok: bool,
    datachannel: dict[str, Any] | None,
    frames_decoded: int,
    selected_pair: dict[str, Any] | None,
    errors: list[str],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "result",
        "ok": ok,
        "datachannel": datachannel,
        "framesDecoded": frames_decoded,
        "selectedPair": selected_pair,
        "errors": errors,
        **extra,
    }
