"""Disposable redis-server and nats-server processes on free loopback ports, for cluster tests.

Tests that kill or restart Redis/NATS must not touch the machine's own services, so each test
starts its own, stops it, restarts it (on the same port, empty), and always cleans up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class ServerProcess:
    """One service process; ``restart()`` brings it back empty on the same port."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"trio-sfu-{self.name}-")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_listening(self.port, self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port, with no state (nothing is persisted)."""
        self.stop()
        for entry in os.listdir(self.dir):
            path = os.path.join(self.dir, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(ServerProcess):
    name = "redis"

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class NatsServer(ServerProcess):
    name = "nats"

    def command(self) -> list[str]:
        return ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def _require(binary: str, package: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed (Debian package {package}; scripts/setup-system)")


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    _require("redis-server", "redis-server")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def nats_server() -> Iterator[NatsServer]:
    _require("nats-server", "nats-server")
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
