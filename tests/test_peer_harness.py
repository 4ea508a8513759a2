"""Self-check of the external-peer harness, before it is pointed at trio-sfu.

The peers are only useful if their verdicts can be trusted both ways: they must pass against a
correct endpoint (aiortc_echo) and fail against a broken one (aiortc_echo --mangle). The message
generator is also pinned to concrete bytes and checked against the browser's copy of it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from typing import Any

import pytest
import trio

from tests.peers import common
from tests.peers.harness import (
    PEERS_DIR,
    PeerError,
    chromium_available,
    open_peer,
    require_chromium,
    run_peer,
)

SELF_CHECK = ("--messages", "200", "--max-size", "65536", "--seed", "7", "--min-frames", "30")
PEER_TIMEOUT = "45"  # the peer's own bound; the harness allows a little more
HARNESS_TIMEOUT = 55.0


async def self_check(script: str, *args: str, mangle: str = "none") -> dict[str, Any]:
    """Run `script` against aiortc_echo, the harness relaying offer and answer."""
    async with open_peer("aiortc_echo.py", "--timeout", "60", "--mangle", mangle) as echo:
        try:
            result = await run_peer(
                script, *args, "--timeout", PEER_TIMEOUT,
                on_offer=echo.answer, timeout=HARNESS_TIMEOUT,
            )
        except PeerError as exc:
            exc.add_note(f"--- aiortc_echo.py stderr (tail) ---\n{echo.stderr_tail()}")
            raise
        result["echoStderrTail"] = echo.stderr_tail()
    return result


def explain(result: dict[str, Any]) -> str:
    """Assertion message: the result without the bulky tails, then the tails."""
    slim = {k: v for k, v in result.items() if not k.endswith("StderrTail") and k != "stderrTail"}
    return (
        json.dumps(slim, indent=1)
        + f"\n--- peer stderr ---\n{result.get('stderrTail', '')}"
        + f"\n--- echo stderr ---\n{result.get('echoStderrTail', '')}"
    )


def assert_passed(result: dict[str, Any], video: bool = True) -> None:
    why = explain(result)
    assert result["ok"] is True, why
    assert result["errors"] == [], why
    assert result["returncode"] == 0, why
    dc = result["datachannel"]
    assert (dc["expected"], dc["sent"], dc["echoed"], dc["mismatches"]) == (200, 200, 200, 0), why
    # The stream is seeded, so the byte counts are known (and equal for both peers).
    assert dc["channels"]["ordered"]["bytesSent"] == 3208250, why
    assert dc["channels"]["unordered"]["bytesSent"] == 3325207, why
    if video:
        assert result["framesDecoded"] >= 30, why
    pair = result["selectedPair"]
    assert pair is not None and pair["remote"]["address"] == "127.0.0.1", why
    assert pair["remote"]["protocol"] == "udp", why


# ----------------------------------------------------------------------------- generator


def test_message_stream_is_pinned() -> None:
    # Concrete values: a change to the generator must be deliberate (and mirrored in the JS).
    assert common.make_message(7, 1, 20) == bytes.fromhex("95ba9c7f299b")
    text = common.make_message(7, 0, 65536)
    assert isinstance(text, str)
    assert sha256(text.encode()) == (
        16610, "1d5fd212b4462fb1b56dc86e25d2d13a07f6c73e0c4b2778abcc1969613fc095"
    )
    data = common.make_message(7, 3, 65536)
    assert isinstance(data, bytes)
    assert sha256(data) == (
        4591, "8a69d73973720a0b31a449e80c85e9ae473ca7a7af89e7d974267c108f293e59"
    )
    assert [common.message_channel(i) for i in range(6)] == [
        "ordered", "ordered", "unordered", "unordered", "ordered", "ordered",
    ]
    assert common.message_plan(6) == {"ordered": [0, 1, 4, 5], "unordered": [2, 3]}


def sha256(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("max_size", [1, 2, 3, 5, 300, 65536])
def test_message_sizes_types_and_characters(max_size: int) -> None:
    widths: set[int] = set()
    sizes = []
    for i in range(60):
        msg = common.make_message(11, i, max_size)
        assert isinstance(msg, str) == (i % 2 == 0)
        data = msg.encode("utf-8") if isinstance(msg, str) else msg
        assert 1 <= len(data) <= max_size
        sizes.append(len(data))
        if isinstance(msg, str):
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in msg)
            assert all(c.isprintable() or ord(c) >= 0xA0 for c in msg)
            widths.update(len(c.encode()) for c in msg)
        assert common.make_message(11, i, max_size) == msg  # deterministic
    if max_size >= 300:
        assert widths == {1, 2, 3, 4}  # every UTF-8 width occurs
        assert len(set(sizes)) > 40  # sizes are spread, not constant
    assert common.make_message(12, 0, max_size) != common.make_message(11, 0, max_size) or (
        max_size == 1
    )


@pytest.mark.browser
def test_generator_matches_the_browser_copy() -> None:
    """chromium_page.js regenerates the stream itself; it must be bit-identical to Python's."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS

    cases = [(7, 40, 65536), (0xDEADBEEF, 40, 3), (-5, 20, 1), (123, 30, 700)]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            page.add_script_tag(path=os.path.join(PEERS_DIR, "chromium_page.js"))
            for seed, count, max_size in cases:
                got = page.evaluate(
                    "([s, n, m]) => window.peer.digestMessages(s, n, m)", [seed, count, max_size]
                )
                want = [fnv_digest(seed, i, max_size) for i in range(count)]
                assert got == want, (seed, max_size)
        finally:
            browser.close()


def fnv_digest(seed: int, index: int, max_size: int) -> list[Any]:
    msg = common.make_message(seed, index, max_size)
    data = msg.encode() if isinstance(msg, str) else msg
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return ["str" if isinstance(msg, str) else "bytes", len(data), h, common.message_channel(index)]


# ----------------------------------------------------------------------------- pieces


def test_echo_tally_detects_reordering_and_type_changes() -> None:
    ordered = common.EchoTally("ordered", ordered=True)
    unordered = common.EchoTally("unordered", ordered=False)
    for m in ("a", b"b", "ü"):
        ordered.on_sent(m)
        unordered.on_sent(m)
    for m in (b"b", "a", "ü"):
        ordered.on_echo(m)
        unordered.on_echo(m)
    assert (ordered.mismatches, unordered.mismatches) == (2, 0)
    assert ordered.first_mismatch == "echo #0: got bytes[1B], want str[1B]"
    assert ordered.complete and unordered.complete
    assert ordered.summary()["bytesSent"] == 4  # "ü" is two bytes

    typed = common.EchoTally("unordered", ordered=False)
    typed.on_sent("a")
    typed.on_echo(b"a")  # same bytes, wrong type
    typed.on_echo("a")
    assert typed.mismatches == 1 and typed.first_mismatch == "unexpected echo bytes[1B]"


OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=video 5000 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 192.0.2.2",
    "a=candidate:1 1 udp 2122063615 192.0.2.2 5000 typ host generation 0",
    "a=candidate:2 1 udp 2122194687 127.0.0.1 5002 typ host generation 0",
    "a=candidate:3 1 tcp 1518214911 127.0.0.1 9 typ host tcptype active generation 0",
    "a=candidate:4 1 udp 2122267903 ::1 5004 typ host generation 0",
    "a=mid:0",
    "m=application 6000 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 127.0.0.1",
    "a=candidate:5 1 udp 2122194687 127.0.0.1 6000 typ host generation 0",
    "a=candidate:6 1 udp 2122063615 fd00::2 6001 typ host generation 0",
    "a=mid:1", "",
])


def test_filter_candidates_keeps_loopback_udp_only() -> None:
    out = common.filter_candidates(OFFER)
    lines = out.split("\r\n")
    assert [ln.split()[4] for ln in lines if ln.startswith("a=candidate:")] == [
        "127.0.0.1", "::1", "127.0.0.1",
    ]
    assert "tcptype" not in out
    # The default address pointed at a dropped candidate: moved to the first kept one.
    assert lines[5:7] == ["m=video 5002 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 127.0.0.1"]
    assert "m=application 6000 UDP/DTLS/SCTP webrtc-datachannel" in lines
    assert out.endswith("a=mid:1\r\n")
    assert common.filter_candidates(OFFER, keep_all=True) == OFFER


def test_chromium_available_names_what_is_missing() -> None:
    missing = chromium_available()
    if os.access("/usr/bin/chromium", os.X_OK):
        assert missing is None
    else:
        assert missing is not None and "/usr/bin/chromium" in missing


# ----------------------------------------------------------------------------- harness


async def test_harness_reports_a_rejected_answer() -> None:
    async def bad_answer(offer: str) -> str:
        assert offer.startswith("v=0")
        return "v=0\r\nthis is not an answer\r\n"

    result = await run_peer(
        "aiortc_peer.py", "--messages", "5", "--timeout", "20",
        on_offer=bad_answer, timeout=30,
    )
    assert result["ok"] is False
    assert result["returncode"] == 1
    assert result["errors"], result
    assert "stderrTail" in result


async def test_harness_times_out_with_the_stderr_tail() -> None:
    async def never(offer: str) -> str:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    with trio.fail_after(30):
        with pytest.raises(PeerError) as info:
            await run_peer(
                "aiortc_peer.py", "--messages", "5", "--timeout", "60",
                on_offer=never, timeout=3,
            )
    assert "no result within 3 s" in str(info.value)
    assert "aiortc_peer.py" in info.value.stderr_tail  # log lines carry the script name


async def test_harness_reports_a_crashed_peer() -> None:
    async def unused(offer: str) -> str:
        raise AssertionError("no offer expected")  # pragma: no cover

    with pytest.raises(PeerError) as info:
        await run_peer("aiortc_peer.py", "--max-size", "0", on_offer=unused, timeout=20)
    assert "stdout closed" in str(info.value)
    assert "--max-size" in info.value.stderr_tail  # argparse's message


@pytest.mark.parametrize("script", ["aiortc_peer.py", "aiortc_echo.py", "chromium_peer.py"])
async def test_peers_exit_on_stdin_eof(script: str) -> None:
    if script == "chromium_peer.py":
        require_chromium()
    with trio.fail_after(30):
        async with open_peer(script, "--timeout", "60") as peer:
            if script != "aiortc_echo.py":
                await peer.receive("offer", timeout=20)
            code = await peer.close(timeout=15)
    # 0 or 1 means it exited by itself; the harness would report -9 after killing it.
    assert code in (0, 1), (code, peer.stderr_tail())
    if script != "aiortc_echo.py":
        assert peer.lines[-1]["type"] == "result" and peer.lines[-1]["ok"] is False
        assert "stdin closed" in peer.lines[-1]["errors"][0]


# ----------------------------------------------------------------------------- self-check


async def test_aiortc_peer_with_aiortc_echo() -> None:
    result = await self_check("aiortc_peer.py", *SELF_CHECK, "--video")
    assert_passed(result)
    assert result["selectedPair"]["local"]["address"] == "127.0.0.1", explain(result)
    assert result["video"]["frameSize"] == [640, 480], explain(result)


@pytest.mark.browser
async def test_chromium_peer_with_aiortc_echo() -> None:
    require_chromium()
    result = await self_check("chromium_peer.py", *SELF_CHECK, "--video")
    assert_passed(result)
    video = result["video"]
    assert video["codec"] == "video/VP8", explain(result)
    assert (video["inbound"]["frameWidth"], video["inbound"]["frameHeight"]) == (640, 480)


@pytest.mark.browser
async def test_chromium_peer_datachannel_only() -> None:
    require_chromium()
    result = await self_check(
        "chromium_peer.py", "--messages", "40", "--max-size", "300", "--no-video"
    )
    assert result["ok"] is True, explain(result)
    assert result["datachannel"]["echoed"] == 40, explain(result)
    assert result["video"] is None


@pytest.mark.parametrize("script", ["aiortc_peer.py", "chromium_peer.py"])
async def test_peers_fail_on_a_corrupting_echo(script: str) -> None:
    if script == "chromium_peer.py":
        require_chromium()
    result = await self_check(script, "--messages", "40", "--max-size", "2000", mangle="corrupt")
    why = explain(result)
    assert result["ok"] is False and result["returncode"] == 1, why
    dc = result["datachannel"]
    # Every 5th echo per channel is altered: 4 of 20 on each.
    assert dc["channels"]["ordered"]["mismatches"] == 4, why
    assert dc["channels"]["unordered"]["mismatches"] == 4, why
    assert (dc["echoed"], dc["mismatches"]) == (40, 8), why
    assert "8 mismatched echoes" in result["missing"], why


@pytest.mark.parametrize("script", ["aiortc_peer.py", "chromium_peer.py"])
async def test_peers_flag_reordering_only_on_the_ordered_channel(script: str) -> None:
    if script == "chromium_peer.py":
        require_chromium()
    result = await self_check(script, "--messages", "40", "--max-size", "2000", mangle="reorder")
    why = explain(result)
    assert result["ok"] is False, why
    channels = result["datachannel"]["channels"]
    assert channels["ordered"]["mismatches"] > 0, why
    assert channels["unordered"]["mismatches"] == 0, why
    assert result["datachannel"]["echoed"] == 40, why


def test_scripts_do_not_import_trio_sfu() -> None:
    """The peers must stay independent implementations."""
    for name in sorted(os.listdir(PEERS_DIR)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(PEERS_DIR, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0] == "trio_sfu" for m in modules), (name, modules)
