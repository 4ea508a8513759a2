"""Scenario for tests/test_bwe_netns.py, run inside its own network namespace (root there).

The SFU, a publisher and a subscriber (our clients) on the namespace's loopback. Everything
the SFU's UDP port sends is shaped by a kernel ``tc htb`` class (the rules forbid netem), so the
subscriber's downlink is a real bottleneck: a queue, then drops. The subscriber reports
arrivals in transport-cc feedback; the SFU's estimator for it (``Downstream.bwe``) must settle
under the cap, then find the room again once the cap is lifted. Prints one JSON line: per
phase, the estimate sampled every 0.5 s (bits/s).

    unshare --net -- python -m tests.bwe_netns KBIT:SECONDS ...   (KBIT 0 = no cap)
"""

from __future__ import annotations

import json
import subprocess
import sys

import trio

from tests.sfu_helpers import record_transport_cc, start_sfu, wait_for


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def cap(port: int, kbit: int, dport: int | None = None, queue_ms: int = 100) -> None:
    """Packets from the SFU's UDP port (to ``dport`` only, if given: one receiver's link) go
    through a ``kbit`` class with a ``queue_ms`` deep queue; the rest is unshaped."""
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
       "rate", "10gbit")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
       "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit")
    # a short queue (~100 ms at the cap by default), as a home router's would be
    sh("tc", "qdisc", "add", "dev", "lo", "parent", "1:20", "bfifo",
       "limit", str(max(kbit * queue_ms // 8, 3000)))
    to = ("match", "ip", "dport", str(dport), "0xffff") if dport is not None else ()
    sh("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "u32",
       "match", "ip", "sport", str(port), "0xffff", *to, "flowid", "1:20")


def uncap() -> None:
    sh("tc", "qdisc", "del", "dev", "lo", "root")


async def main(phases: list[tuple[int, float]]) -> None:
    sh("ip", "link", "set", "lo", "up")
    async with trio.open_nursery() as nursery:
        env = await start_sfu(nursery)
        bob = await env.subscriber("r", "bob-1")
        alice = await env.publisher("r", "alice-1", audio=False)
        await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"), 30)
        recorder = record_transport_cc(bob)
        bwe = env.sfu.rooms["r"].subscribers["bob-1"].bwe

        async def feedback() -> None:
            while True:
                await trio.sleep(0.05)
                for fb in recorder.build_feedback(trio.current_time(), 1, 0):
                    bob.pc.send_rtcp(fb.serialize())

        async def publish() -> None:
            # ~1.3 Mbit/s: far above the cap, below what the lifted link carries
            i = 0
            while True:
                alice.send_frame(keyframe=i % 300 == 0, size=1100)
                i += 1
                await trio.sleep(0.007)

        async def sample(seconds: float) -> list[float]:
            out = []
            for _ in range(int(seconds * 2)):
                await trio.sleep(0.5)
                out.append(bwe.estimate)
            return out

        nursery.start_soon(feedback)
        nursery.start_soon(publish)
        port = env.server.endpoint.local_address[1]
        out: list[list[float]] = []
        for kbit, seconds in phases:
            if kbit:
                cap(port, kbit)
            out.append(await sample(seconds))
            if kbit:
                uncap()
        print(json.dumps(out), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(
        main, [(int(k), float(t)) for k, t in (a.split(":") for a in sys.argv[1:])]
    )
