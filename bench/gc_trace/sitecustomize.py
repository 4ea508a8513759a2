"""Times every garbage collection of a ``python -m trio_sfu`` server (docs/benchmarks.md,
"Full collections at saturation"); not imported by the package.

Put this directory first on ``PYTHONPATH`` for a bench run and set ``GC_TRACE_DIR``; every
server process (one whose command line has ``trio_sfu`` and ``--http-port``) then writes
``$GC_TRACE_DIR/gc.<pid>.jsonl``: one line per full (generation 2) collection (``m``:
``time.monotonic()``, the bench's clock; ``ms``: pause; ``collected``) and about once a second
the running totals per generation (collections, pause ms) and the frozen object count::

    GC_TRACE_DIR=/tmp/gc PYTHONPATH=bench/gc_trace:. \\
        .venv/bin/python -m bench.pod --saturate 450 --seconds 12 --log /tmp/gc/sat

(``bench.pod`` passes its environment to the server.) The load testers are not traced.
"""

from __future__ import annotations

import os


def _install() -> None:
    where = os.environ.get("GC_TRACE_DIR")
    if not where:
        return
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return
    if b"trio_sfu" not in argv or b"--http-port" not in argv:
        return
    import gc
    import json
    import time

    out = open(os.path.join(where, f"gc.{os.getpid()}.jsonl"), "w", buffering=1)  # noqa: SIM115
    started = [0.0]
    counts = [0, 0, 0]
    pauses = [0.0, 0.0, 0.0]
    last = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        generation = info["generation"]
        counts[generation] += 1
        pauses[generation] += pause
        now = time.monotonic()
        if generation == 2:
            full = {"m": now, "ev": "full", "ms": round(pause * 1000, 2)}
            out.write(json.dumps({**full, "collected": info["collected"]}) + "\n")
        if now - last[0] >= 1.0:
            last[0] = now
            totals = {"m": now, "ev": "totals", "n": counts}
            totals["pause_ms"] = [round(p * 1000, 1) for p in pauses]
            out.write(json.dumps({**totals, "frozen": gc.get_freeze_count()}) + "\n")

    gc.callbacks.append(timed)


_install()
