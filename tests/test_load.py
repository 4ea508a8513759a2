"""``trio-sfu load`` (issue 10) against a real server process: real clients on our own stack,
JSON and plot checked (counts, not timing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_LINE = re.compile(r"trio-sfu: demo at (http://127\.0\.0\.1:\d+/)")


@pytest.fixture
def server() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "trio_sfu",
            "--http-host", "127.0.0.1", "--http-port", "0",
            "--udp-host", "127.0.0.1", "--udp-port", "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: EOF if start-up fails
        match = DEMO_LINE.search(line)
        assert match is not None, f"no demo URL in {line!r}"
        yield match.group(1)
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def load(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_sfu", "load", "--url", url, "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_load_reports_what_subscribers_received(server: str, tmp_path: Path) -> None:
    plot = tmp_path / "load.png"
    done = load(
        server,
        "--room", "ci",
        "--publishers", "1",
        "--subscribers", "3",
        "--video-bitrate", "300k",
        "--duration", "3",
        "--processes", "2",
        "--json", "-",
        "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["clients"] == {"publishers": 1, "subscribers": 3, "connected": 4, "failed": 0}
    packets = result["packets"]
    assert packets["sent"] > 0
    # Every subscriber gets both tracks: what arrived is three times what was sent, give or
    # take the packets in flight when the publisher joined and left.
    assert packets["delivered"] > 0 and packets["expected"] > 0
    assert packets["lost"] == 0 and packets["loss"] == 0.0
    assert packets["delivered"] <= 3 * packets["sent"]
    # Per subscriber too (the spread says whether loss at saturation is shared fairly).
    assert result["subscriber_loss"] == {"subscribers": 3, "min": 0.0, "median": 0.0, "max": 0.0}
    assert result["latency_ms"]["p50"] is not None and result["latency_ms"]["p50"] > 0
    assert result["join_ms"]["p50"] is not None
    rows = result["seconds"]
    assert rows and sum(r["delivered"] for r in rows) > 0
    # The server's CPU comes from its /metrics (process_cpu_seconds_total).
    assert any(r["server_cpu_percent"] is not None for r in rows)
    assert result["server"]["cpu_percent"] is not None
    assert result["errors"] == []
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sink_subscribers_count_without_decrypting(server: str) -> None:
    """``--sink``: loss from the clear RTP header, no latency (the stamp is encrypted)."""
    done = load(
        server, "--room", "sink", "--subscribers", "2", "--video-bitrate", "300k",
        "--duration", "2", "--sink", "--json", "-",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["clients"]["connected"] == 3
    packets = result["packets"]
    assert packets["delivered"] > 0 and packets["lost"] == 0
    assert result["subscriber_loss"]["subscribers"] == 2
    assert result["latency_ms"]["p50"] is None
    assert isinstance(result["media_started_monotonic"], float)


def test_simulcast_subscribers_get_the_stream_they_ask_for(server: str) -> None:
    """``--simulcast --layer spread``: one publisher sends q/h/f (rids, MID/RID extensions,
    PLI answered), three subscribers ask for low, mid and high with ``LAYER``; what each one
    decrypts says which stream it was sent on. Every subscriber's stream stays continuous
    across the switch from the SFU's first choice."""
    done = load(
        server, "--room", "simulcast", "--subscribers", "3", "--simulcast", "--layer", "spread",
        "--duration", "4", "--json", "-",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["config"]["simulcast"] is True and result["config"]["layer"] == "spread"
    assert result["clients"]["connected"] == 4 and result["errors"] == []
    assert result["packets"]["lost"] == 0 and result["packets"]["delivered"] > 0
    layers = result["layers"]
    assert layers["subscribers"] == {"low": 1, "mid": 1, "high": 1}
    # 1.5 Mbit/s at 30 frames/s: 1, 2 and 6 packets a frame on q, h and f.
    delivered = layers["delivered"]
    assert 0 < delivered["low"] < delivered["mid"] < delivered["high"]
    table = load(
        server, "--room", "simulcast-auto", "--simulcast", "--duration", "2",
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "simulcast packets delivered low / mid / high" in table.stdout


def test_feedback_subscribers_report_like_a_browser(server: str) -> None:
    """``--feedback``: subscribers (here sinks, which read the transport-wide number from the
    clear header) send transport-cc feedback and receiver reports; the server's round-trip
    histogram counts the reports' LSR/DLSR."""
    import httpx

    done = load(
        server, "--room", "feedback", "--subscribers", "2", "--video-bitrate", "300k",
        "--duration", "3", "--sink", "--feedback", "--json", "-",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["config"]["feedback"] is True
    assert result["packets"]["delivered"] > 0 and result["packets"]["lost"] == 0
    metrics = httpx.get(f"{server}metrics", timeout=10).text
    count = re.search(r"^trio_sfu_subscriber_rtt_seconds_count\{[^}]*\} (\S+)$", metrics, re.M)
    assert count is not None and float(count.group(1)) >= 2, metrics[-2000:]


def test_load_table_and_usage_errors(server: str) -> None:
    done = load(server, "--subscribers", "1", "--duration", "1", "--video-bitrate", "0")
    assert done.returncode == 0, done.stderr
    assert "packets delivered to subscribers" in done.stdout
    bad = load(server, "--video-bitrate", "fast")
    assert bad.returncode == 2 and "bitrate" in bad.stderr
    nothing = load(server, "--video-bitrate", "0", "--no-audio")
    assert nothing.returncode == 2 and "send nothing" in nothing.stderr
    one_stream = load(server, "--layer", "low")
    assert one_stream.returncode == 2 and "needs --simulcast" in one_stream.stderr
    no_video = load(server, "--simulcast", "--video-bitrate", "0")
    assert no_video.returncode == 2 and "needs video" in no_video.stderr


def test_unreachable_server_fails_cleanly() -> None:
    # --retries 2: each client tries three times (the default, 8, backs off for ≈ 20 s)
    done = load("http://127.0.0.1:9/", "--duration", "1", "--retries", "2", "--json", "-")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["clients"]["connected"] == 0 and result["clients"]["failed"] == 2
    assert len(result["errors"]) == 2
    for error in result["errors"]:
        assert "no answer from http://127.0.0.1:9/" in error and "in 3 attempts" in error, error
