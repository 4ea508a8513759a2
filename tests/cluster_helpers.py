"""A cluster on one machine for tests: pods as separate processes, and a load balancer.

Each pod is ``python -m trio_sfu`` with its own HTTP and UDP port (picked by the OS), pointed at
a disposable redis-server and nats-server (tests/services.py). The load balancer stands in for
a Kubernetes Service: it forwards each request to a ready pod, and to the next one when a pod
answers 503 (draining) or is gone — which is what makes RECONNECT land on a live pod.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import trio

_HOP_BY_HOP = ("content-length", "transfer-encoding", "connection", "content-encoding")
DEMO_LINE = re.compile(rb"demo at http://[^:]+:(\d+)/")
STDERR_TAIL = 300


@dataclass
class Pod:
    name: str
    proc: trio.Process
    http_port: int = 0
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL)
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        """SIGKILL: the pod vanishes without cleaning up (its heartbeat expires)."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the pod drains (RECONNECT to its clients) and exits."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def tail(self) -> str:
        return "\n".join(self.output)


async def _pump_output(pod: Pod, started: trio.Event) -> None:
    assert pod.proc.stdout is not None
    buffer = b""
    async for chunk in pod.proc.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            pod.output.append(line.decode(errors="replace"))
            if os.environ.get("TRIO_SFU_POD_LOG") == "1":
                print(f"[{pod.name}] {line.decode(errors='replace')}", file=sys.stderr)
            match = DEMO_LINE.search(line)
            if match and not started.is_set():
                pod.http_port = int(match.group(1))
                started.set()


@asynccontextmanager
async def run_pods(
    names: list[str], *, redis_url: str, nats_url: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[dict[str, Pod]]:
    """Start one pod per name; kill any that are left at the end."""
    pods: dict[str, Pod] = {}
    async with trio.open_nursery() as nursery:
        try:
            for name in names:
                pods[name] = await _start_pod(nursery, name, redis_url, nats_url, extra_env or {})
            yield pods
        finally:
            for pod in pods.values():
                pod.kill()
            with trio.move_on_after(10):
                for pod in pods.values():
                    await pod.proc.wait()
            nursery.cancel_scope.cancel()


async def _start_pod(
    nursery: trio.Nursery, name: str, redis_url: str, nats_url: str, extra_env: dict[str, str]
) -> Pod:
    env = {
        **os.environ,
        "TRIO_SFU_HTTP_HOST": "127.0.0.1",
        "TRIO_SFU_HTTP_PORT": "0",
        "TRIO_SFU_UDP_HOST": "127.0.0.1",
        "TRIO_SFU_UDP_PORT": "0",
        "TRIO_SFU_PUBLIC_IP": "127.0.0.1",
        "TRIO_SFU_REDIS_URL": redis_url,
        "TRIO_SFU_NATS_URL": nats_url,
        "TRIO_SFU_NODE_ID": name,
        "TRIO_SFU_LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_sfu", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pod = Pod(name, proc)
    started = trio.Event()
    nursery.start_soon(_pump_output, pod, started)
    with trio.move_on_after(30) as scope:
        await started.wait()
    if scope.cancelled_caught:
        pod.kill()
        raise RuntimeError(f"pod {name} did not start:\n{pod.tail()}")
    await wait_ready(pod)
    return pod


async def wait_ready(pod: Pod, timeout: float = 20) -> None:
    async with httpx.AsyncClient() as http:
        with trio.move_on_after(timeout):
            while True:
                try:
                    if (await http.get(pod.url + "/readyz", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
    raise RuntimeError(f"pod {pod.name} not ready after {timeout} s:\n{pod.tail()}")


class LoadBalancer:
    """An HTTP balancer over the pods, of one of three kinds (issue 9 measures drains with each):

    - ``retrying`` (the default): round robin over the pods whose process is alive; a 503 or a
      refused connection moves the request to the next pod (nginx's ``proxy_next_upstream``,
      or a Kubernetes Service whose endpoints follow the pods, in small).
    - ``round-robin``: every request to the next pod in turn, whatever its state; a refused
      connection is a 502 (a balancer with no checks at all).
    - ``health-checking``: round robin over the pods whose ``/readyz`` answered 200 at the last
      check, every ``check_interval`` (HAProxy ``check inter 1s fall 1``); no retries.
    """

    KINDS = ("retrying", "round-robin", "health-checking")

    def __init__(
        self, pods: dict[str, Pod], kind: str = "retrying", check_interval: float = 1.0
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(kind)
        self.pods = pods
        self.kind = kind
        self.check_interval = check_interval
        self._turn = itertools.count()
        self.routed: list[str] = []  # pod names, one per forwarded request
        self.statuses: list[tuple[str, str, int]] = []  # (pod, method path, status) per answer
        #: a pod to try first (a test placing a client on a given pod), else round-robin
        self.prefer: str | None = None
        self.healthy: set[str] = set(pods)

    async def check_health(self) -> None:
        """The health-checking kind's probe loop (runs for the balancer's lifetime)."""
        async with httpx.AsyncClient() as http:
            while True:
                for pod in list(self.pods.values()):
                    try:
                        ok = (await http.get(pod.url + "/readyz", timeout=1)).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        self.healthy.add(pod.name)
                    else:
                        self.healthy.discard(pod.name)
                await trio.sleep(self.check_interval)

    def _candidates(self) -> list[Pod]:
        if self.kind == "round-robin":
            return list(self.pods.values())
        if self.kind == "health-checking":
            return [p for p in self.pods.values() if p.name in self.healthy]
        return [p for p in self.pods.values() if p.alive]

    async def forward(self, method: str, path: str, headers: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
        live = self._candidates()
        if self.prefer is not None:
            live.sort(key=lambda p: p.name != self.prefer)
        start = 0 if self.prefer is not None else next(self._turn)
        tries = len(live) if self.kind == "retrying" else min(1, len(live))
        last = None
        async with httpx.AsyncClient() as http:
            for i in range(tries):
                pod = live[(start + i) % len(live)]
                try:
                    response = await http.request(
                        method, pod.url + path, headers=headers, content=body, timeout=10
                    )
                except httpx.HTTPError:
                    continue
                last = response
                self.statuses.append((pod.name, f"{method} {path}", response.status_code))
                if response.status_code != 503 or self.kind != "retrying":
                    self.routed.append(pod.name)
                    return response
        return last


@asynccontextmanager
async def serve_load_balancer(
    pods: dict[str, Pod], kind: str = "retrying"
) -> AsyncIterator[tuple[str, LoadBalancer]]:
    """An HTTP server on a free port forwarding to ``pods``; yields (base URL, balancer)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart import Response, request
    from quart_trio import QuartTrio

    balancer = LoadBalancer(pods, kind)
    app = QuartTrio("lb")

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "DELETE", "PATCH", "OPTIONS"])
    @app.route("/<path:path>", methods=["GET", "POST", "DELETE", "PATCH", "OPTIONS"])
    async def proxy(path: str) -> Response:
        body = await request.get_data()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        full = "/" + path + (("?" + request.query_string.decode()) if request.query_string else "")
        upstream = await balancer.forward(request.method, full, headers, body)
        if upstream is None:
            return Response("no pod available", status=502)
        keep = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower()
            not in ("content-length", "transfer-encoding", "connection", "content-encoding")
        }
        return Response(upstream.content, status=upstream.status_code, headers=keep)

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        if kind == "health-checking":
            nursery.start_soon(balancer.check_health)
        binds = await nursery.start(serve, app, config)
        port = int(binds[0].rsplit(":", 1)[1])
        try:
            yield f"http://127.0.0.1:{port}", balancer
        finally:
            nursery.cancel_scope.cancel()
