"""The whole process: UDP endpoint + SFU + Hypercorn under one nursery, in-process and as the
``trio-sfu`` / ``python -m trio_sfu`` command."""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import live_tasks
from tests.rtc_helpers import client_certificate
from tests.test_cli import tls_files  # noqa: F401  (fixture)
from trio_sfu.app import Running, StartupError, serve
from trio_sfu.client.sfu import PublisherClient, SubscriberClient, http_signal
from trio_sfu.config import Config, ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>trio-sfu demo</title>")
    (root / "sfu-client.js").write_text("export class Sfu {}\n")
    return root


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record gc.freeze() instead of freezing the test process's heap."""
    calls: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(True))
    return calls


def local_config(site: Path, **overrides: object) -> Config:
    values: dict[str, object] = {
        "http_host": "127.0.0.1",
        "http_port": 0,
        "udp_host": "127.0.0.1",
        "udp_port": 0,
        "site_dir": site,
    }
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


# -- in-process -------------------------------------------------------------------------------


async def test_serve_end_to_end_and_clean_shutdown(
    site: Path, frozen: list[bool], capsys: pytest.CaptureFixture[str]
) -> None:
    await trio.testing.wait_all_tasks_blocked()
    baseline = len(live_tasks())
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            lambda task_status: serve(
                local_config(site), task_status=task_status, handle_signals=False
            )
        )
        assert running.http_port > 0 and running.udp_port > 0
        assert running.demo_url == f"http://127.0.0.1:{running.http_port}/"
        assert running.public_addresses == ["127.0.0.1"]
        assert f"trio-sfu: demo at {running.demo_url}" in capsys.readouterr().out
        # gc.freeze() once start-up is done; a full collection since then adds the GC policy's
        # own freeze (trio_sfu/gcpolicy.py), so this counts at least one, not exactly one
        assert frozen
        base = running.demo_url.rstrip("/")

        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.get("/")
            assert (r.status_code, r.headers["content-type"].split(";")[0]) == (200, "text/html")
            assert "trio-sfu demo" in r.text
            assert (
                (await http.get("/sfu-client.js"))
                .headers["content-type"]
                .startswith("text/javascript")
            )
            assert (await http.get("/rooms")).json() == {"rooms": []}

            async with trio.open_nursery() as clients:
                sub = SubscriberClient("bob-x9", certificate=client_certificate())
                await clients.start(sub.connect, http_signal(base, "sub", "r1", "bob-x9"))
                with trio.fail_after(10):
                    await sub.pc.wait_connected()
                await sub.wait_open()
                pub = PublisherClient("alice-k3j2", certificate=client_certificate())
                await clients.start(pub.connect, http_signal(base, "pub", "r1", "alice-k3j2"))
                await pub.wait_open()
                await sub.expect("PUB_JOIN alice-k3j2")
                with trio.fail_after(10):
                    while not sub.negotiated_for("alice-k3j2"):
                        await trio.sleep(0.02)
                    # Media through the whole process: publisher -> SFU -> subscriber.
                    while sub.packets["alice-k3j2"] < 20:
                        pub.send_frame(keyframe=True)
                        await trio.sleep(0.01)

                room = (await http.get("/rooms/r1")).json()
                assert [p["id"] for p in room["publishers"]] == ["alice-k3j2"]
                assert [s["id"] for s in room["subscribers"]] == ["bob-x9"]
                assert running.rtc.endpoint.demux_entries() > 0

                # Graceful stop, as SIGTERM does: every server peer is closed.
                running.shutdown()
                with trio.fail_after(15):
                    await sub.pc.wait_closed()
                    await pub.pc.wait_closed()
        assert running.rtc.endpoint.demux_entries() == 0
    # serve() returned: nothing of it is left running, and its ports are free again.
    await trio.testing.wait_all_tasks_blocked()
    assert len(live_tasks()) == baseline
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", running.udp_port))
    with socket.socket() as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        tcp.bind(("127.0.0.1", running.http_port))
        tcp.listen()  # only works if nobody listens there any more


async def test_cancellation_stops_everything(site: Path, frozen: list[bool]) -> None:
    await trio.testing.wait_all_tasks_blocked()
    baseline = len(live_tasks())
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(
                lambda task_status: serve(
                    local_config(site, consent_timeout=4.0),
                    task_status=task_status,
                    handle_signals=False,
                )
            )
            assert running.rtc.consent_timeout == 4.0  # --consent-timeout reaches the peers
            base = running.demo_url.rstrip("/")
            sub = SubscriberClient("carol-1", certificate=client_certificate())
            await nursery.start(sub.connect, http_signal(base, "sub", "r2", "carol-1"))
            await sub.wait_open()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    await trio.testing.wait_all_tasks_blocked()
    assert len(live_tasks()) == baseline
    assert running.rtc.endpoint.demux_entries() == 0


async def test_https(site: Path, frozen: list[bool], tls_files: tuple[Path, Path]) -> None:  # noqa: F811
    cert, key = tls_files
    config = local_config(site, cert=cert, key=key)
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            lambda task_status: serve(config, task_status=task_status, handle_signals=False)
        )
        assert running.demo_url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as http:
            r = await http.get(running.demo_url + "healthz")
            assert (r.status_code, r.text) == (200, "ok\n")
            assert r.http_version in ("HTTP/1.1", "HTTP/2")
        running.shutdown()


async def test_half_a_cluster_configuration_is_refused(site: Path) -> None:
    with pytest.raises(ConfigError, match="needs both --redis-url and --nats-url"):
        await serve(local_config(site, redis_url="redis://localhost:6379"), handle_signals=False)


async def test_busy_http_port_is_an_error_and_frees_udp(site: Path, frozen: list[bool]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        udp_port = _free_udp_port()
        with pytest.raises(StartupError, match=f"HTTP port 127.0.0.1:{port}: Address already"):
            await serve(local_config(site, http_port=port, udp_port=udp_port), handle_signals=False)
    # The UDP port was released: binding it again works.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", udp_port))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- as a command -----------------------------------------------------------------------------

DEMO_LINE = re.compile(r"trio-sfu: demo at (http://127\.0\.0\.1:(\d+)/)")
#: stderr a JSON-logging process wrote before start() saw its start-up entry, by pid
EARLY_STDERR: dict[int, str] = {}


def command_line(site: Path, *extra: str) -> list[str]:
    return [
        "--http-host", "127.0.0.1",
        "--http-port", "0",
        "--udp-host", "127.0.0.1",
        "--udp-port", "0",
        "--site-dir", str(site),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed (by pid) if the test did not end them."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start(
    started: list[subprocess.Popen[str]], argv: list[str], **env: str
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
    )
    started.append(proc)
    assert proc.stdout is not None and proc.stderr is not None
    if env.get("TRIO_SFU_LOG_FORMAT") == "json":
        # JSON logs are JSON only: the URL is in the start-up entry on stderr, not stdout.
        early: list[str] = []
        for line in proc.stderr:  # bounded: the process exits (EOF) if start-up fails
            early.append(line)
            entry = json.loads(line)
            if entry["msg"] == "trio-sfu started":
                EARLY_STDERR[proc.pid] = "".join(early)
                return proc, entry["demo"]
        raise AssertionError(f"no start-up entry; stderr:\n{''.join(early)}")
    line = proc.stdout.readline()  # bounded: the process exits (EOF) if start-up fails
    match = DEMO_LINE.search(line)
    if match is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no demo URL in {line!r}; stderr:\n{err}")
    return proc, match.group(1)


def check_serving(url: str) -> None:
    with httpx.Client(timeout=10) as http:
        r = http.get(url)
        assert r.status_code == 200
        assert "trio-sfu demo" in r.text
        assert http.get(url + "rooms").json() == {"rooms": []}


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    if proc.pid in EARLY_STDERR:
        assert out == "", f"JSON logs, yet stdout has {out!r}"
        err = EARLY_STDERR.pop(proc.pid) + err
    return proc.returncode, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_python_m_serves_and_exits_0_on_signal(
    site: Path, started: list[subprocess.Popen[str]], signum: int
) -> None:
    proc, url = start(started, [sys.executable, "-m", "trio_sfu", *command_line(site)])
    check_serving(url)
    code, err = stop(proc, signum)
    assert code == 0, err
    # SIGINT stops at once; SIGTERM drains first (RECONNECT to clients), then stops.
    assert ("draining" if signum == signal.SIGTERM else "shutting down") in err
    assert "trio-sfu stopped" in err
    assert "Traceback" not in err


def test_console_script(site: Path, started: list[subprocess.Popen[str]]) -> None:
    scripts = [e for e in importlib.metadata.entry_points(group="console_scripts")
               if e.name == "trio-sfu"]  # fmt: skip
    if not scripts:
        pytest.skip("trio-sfu is not installed as a console script yet (pip install -e .)")
    assert scripts[0].value == "trio_sfu.cli:main"
    exe = shutil.which("trio-sfu", path=str(Path(sys.executable).parent))
    assert exe is not None, "entry point declared but the trio-sfu script is missing"
    proc, url = start(started, [exe, "serve", *command_line(site)])
    check_serving(url)
    code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err


def test_env_configuration_and_json_logs(site: Path, started: list[subprocess.Popen[str]]) -> None:
    proc, url = start(
        started,
        [sys.executable, "-m", "trio_sfu"],
        TRIO_SFU_HTTP_HOST="127.0.0.1",
        TRIO_SFU_HTTP_PORT="0",
        TRIO_SFU_UDP_HOST="127.0.0.1",
        TRIO_SFU_UDP_PORT="0",
        TRIO_SFU_SITE_DIR=str(site),
        TRIO_SFU_LOG_FORMAT="json",
        TRIO_SFU_LOG_LEVEL="info",
    )
    check_serving(url)
    code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    started_entry = next(e for e in entries if e["msg"] == "trio-sfu started")
    assert started_entry["public_ips"] == ["127.0.0.1"]
    assert started_entry["udp_port"] > 0
    access = [e for e in entries if e["logger"] == "trio_sfu.http.access"]
    logged = {(e["method"], e["path"], e["status"]) for e in access}
    assert ("GET", "/rooms", 200) in logged
    assert ("GET", "/", 200) not in logged  # the demo's files are logged at debug only


def test_busy_port_exits_1(site: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = command_line(site)
        argv[argv.index("--http-port") + 1] = str(port)
        out = subprocess.run(
            [sys.executable, "-m", "trio_sfu", *argv],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"trio-sfu: cannot listen on the HTTP port 127.0.0.1:{port}:" in out.stderr
    assert "Traceback" not in out.stderr


async def test_shutdown_with_no_clients(site: Path, frozen: list[bool]) -> None:
    """Running.shutdown() with nothing connected returns promptly."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(
                lambda task_status: serve(
                    local_config(site), task_status=task_status, handle_signals=False
                )
            )
            running.shutdown()
