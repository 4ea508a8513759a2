"""A trio-sfu process for abuse tests: started with the limits a test wants, measured from
outside (``GET /metrics`` and the process's RSS), killed by pid at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from tests.cluster_helpers import Pod, _pump_output


@dataclass
class Server:
    pod: Pod

    @property
    def url(self) -> str:
        return self.pod.url

    @property
    def port(self) -> int:
        return self.pod.http_port

    def rss_mib(self) -> float:
        """Resident set size of the server process (Linux /proc)."""
        with open(f"/proc/{self.pod.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    async def metrics(self) -> dict[str, float]:
        async with httpx.AsyncClient(timeout=10) as http:
            try:
                r = await http.get(self.url + "/metrics")
            except httpx.HTTPError as error:
                alive = "alive" if self.pod.alive else f"exited {self.pod.proc.returncode}"
                raise AssertionError(f"/metrics: {error!r} ({alive})\n{self.pod.tail()}") from None
        assert r.status_code == 200, r.text
        values = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name.partition("{")[0]] = float(value)  # every series has a node label
        return values

    async def wait_metrics(self, expected: dict[str, float], timeout: float = 30) -> None:
        """Wait (bounded) until every named metric has the expected value."""
        got: dict[str, float] = {}
        with trio.move_on_after(timeout):
            while True:
                got = await self.metrics()
                if all(got.get(k) == v for k, v in expected.items()):
                    return
                await trio.sleep(0.2)
        shown = {k: got.get(k) for k in expected}
        raise AssertionError(f"metrics {shown} never reached {expected}\n{self.pod.tail()}")


@asynccontextmanager
async def run_server(**settings: str) -> AsyncIterator[Server]:
    """``python -m trio_sfu`` on loopback with free ports and ``TRIO_SFU_<NAME>`` settings."""
    env = {
        **os.environ,
        "TRIO_SFU_HTTP_HOST": "127.0.0.1",
        "TRIO_SFU_HTTP_PORT": "0",
        "TRIO_SFU_UDP_HOST": "127.0.0.1",
        "TRIO_SFU_UDP_PORT": "0",
        "TRIO_SFU_PUBLIC_IP": "127.0.0.1",
        "TRIO_SFU_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
        **{f"TRIO_SFU_{k.upper()}": v for k, v in settings.items()},
    }
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_sfu", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pod = Pod("abuse", proc)
        started = trio.Event()
        nursery.start_soon(_pump_output, pod, started)
        try:
            with trio.fail_after(30):
                await started.wait()
            yield Server(pod)
        finally:
            pod.kill()
            with trio.move_on_after(10):
                await proc.wait()
            nursery.cancel_scope.cancel()


def tracebacks(server: Server) -> list[str]:
    """Lines of the server's output that show an unhandled error."""
    return [
        line
        for line in server.pod.output
        if "Traceback" in line or "Error in ASGI" in line or " 500 " in line
    ]
