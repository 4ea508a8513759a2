"""Start-up and logs (issue 13, item 7), against real ``trio-sfu serve`` processes: JSON logs
are JSON only (Hypercorn's lines and the banner included), unreachable backends leave the pod
up with /readyz 503 (or exit 2 with one line by --require-backends), busy ports are named, no
traceback anywhere; in-process: ``left`` carries duration, bytes and reason, one vocabulary."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import trio

from tests.sfu_helpers import start_sfu, wait_for

START_TIMEOUT = 30.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "trio_sfu", "serve", "--http-host", "127.0.0.1",
            "--udp-host", "127.0.0.1", "--udp-port", "0", *flags]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIO_SFU_")}


@contextmanager
def server(*flags: str) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """A server process on a known free HTTP port; yields it, the port and its stderr lines
    read so far (the caller reads more through ``proc``)."""
    port = free_port()
    proc = subprocess.Popen(command("--http-port", str(port), *flags), env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate(timeout=5)
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not start")
        yield proc, port, []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_json_logs_are_json_only_and_site_files_are_debug() -> None:
    with server("--log-format", "json") as (proc, port, _):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/", timeout=5).status_code == 200
        assert httpx.get(base + "/app.js", timeout=5).status_code == 200
        assert httpx.get(base + "/nothing-here", timeout=5).status_code == 404
        assert httpx.post(base + "/pub/r/a-1", content="x", timeout=5).status_code == 415
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert out == "", f"stdout is not for logs in JSON mode: {out!r}"
    entries = []
    for line in err.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}\n{err}") from None
    messages = [e["msg"] for e in entries]
    started = next(e for e in entries if e["msg"] == "trio-sfu started")
    assert started["demo"] == f"http://127.0.0.1:{port}/"
    assert any(m.startswith("Running on") for m in messages), messages  # Hypercorn's, as JSON
    paths = [e.get("path") for e in entries if e["logger"] == "trio_sfu.http.access"]
    assert "/nothing-here" in paths and "/pub/r/a-1" in paths, paths
    assert "/" not in paths and "/app.js" not in paths, "site files are logged at debug only"


def test_unreachable_backends_start_with_readyz_503_and_no_traceback() -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}"
    nats_url = f"nats://127.0.0.1:{free_port()}"
    with server("--redis-url", redis_url, "--nats-url", nats_url) as (proc, port, _):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/readyz", timeout=5).status_code == 503
        time.sleep(1.0)  # a few retries later: still up, still not ready
        assert proc.poll() is None
        assert httpx.get(base + "/readyz", timeout=5).status_code == 503
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err
    assert redis_url in err and nats_url in err, "the warning names the backends"


def test_require_backends_exits_2_with_one_line() -> None:
    redis_url = f"redis://user:hunter2@127.0.0.1:{free_port()}"
    nats_url = f"nats://127.0.0.1:{free_port()}"
    done = subprocess.run(
        command("--http-port", "0", "--redis-url", redis_url, "--nats-url", nats_url,
                "--require-backends", "--log-level", "error"),
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "cannot reach Redis at redis://127.0.0.1:" in lines[0]
    assert f"NATS at {nats_url}" in lines[0]
    assert "hunter2" not in done.stderr


@contextmanager
def resetting_listener() -> Iterator[int]:
    """A TCP port that accepts and at once resets every connection (SO_LINGER 0)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_require_backends_exits_against_a_nats_port_that_resets() -> None:
    """A NATS URL whose port accepts and resets (a dead backend behind a proxy): the pod
    still gives up with exit 2. Before, about one start in five hung in its NATS task (nats-py
    retrying forever after Python 3.11's wait_for swallowed the cancellation; seen in CI when
    a stray browser's ICE-TCP listener took the test's "free" port)."""
    with resetting_listener() as port:
        for _ in range(3):
            nats_url = f"nats://127.0.0.1:{port}"
            done = subprocess.run(
                command("--http-port", "0", "--redis-url", f"redis://127.0.0.1:{free_port()}",
                        "--nats-url", nats_url, "--require-backends", "--log-level", "error"),
                env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
            )
            assert done.returncode == 2, done
            assert f"NATS at {nats_url}" in done.stderr


@pytest.mark.parametrize("which", ["http", "udp"])
def test_busy_port_is_named(which: str) -> None:
    kind = socket.SOCK_STREAM if which == "http" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if which == "http":
            busy.listen()
        port = busy.getsockname()[1]
        flags = ["--http-port", str(port)] if which == "http" else [
            "--http-port", "0", "--udp-port", str(port)]
        # (a repeated flag's last value wins: --udp-port PORT over command()'s 0)
        done = subprocess.run(command(*flags, "--log-level", "error"), env=clean_env(),
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_left_carries_duration_bytes_reason_in_one_vocabulary(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = await start_sfu(nursery)
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", audio=False)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    for i in range(20):
        alice.send_frame(keyframe=i == 0, size=500)
        await trio.sleep(0.002)
    await wait_for(lambda: bob.packets.get("alice-1", 0) >= 20)
    await env.sfu.stop("sub", "r", "bob-1")
    await env.sfu.stop("pub", "r", "alice-1")
    left = {r.peer: r for r in caplog.records if r.getMessage() == "left"}  # type: ignore[attr-defined]
    assert set(left) == {"alice-1", "bob-1"}
    for peer, role in (("alice-1", "publisher"), ("bob-1", "subscriber")):
        record = left[peer]
        assert (record.room, record.role, record.reason) == ("r", role, "delete")  # type: ignore[attr-defined]
        assert record.duration > 0  # type: ignore[attr-defined]
    assert left["alice-1"].bytes_in >= 20 * 500  # type: ignore[attr-defined]
    assert left["bob-1"].bytes_out >= 20 * 500  # type: ignore[attr-defined]
    # The rtc layer speaks the same words: peer is the connection id, with room and role.
    closing = [r for r in caplog.records if r.getMessage() == "peer closing"]
    # (the clients' own connections, in this process too, log only their names)
    assert not [r.peer for r in closing if "/" in r.peer]  # type: ignore[attr-defined]
    server_side = {(r.peer, r.room, r.role) for r in closing if hasattr(r, "room")}  # type: ignore[attr-defined]
    assert server_side == {("alice-1", "r", "publisher"), ("bob-1", "r", "subscriber")}
