"""Simulcast on a capped link, with real browsers (issue 11's proof in CI).

tests/simulcast_netns.py runs the SFU, a Chromium simulcast publisher (720p as q/h/f) and two
Chromium subscribers in a private network namespace; once both decode the top stream, what
the SFU sends carol passes a 400 kbit/s kernel ``tc htb`` class. carol must settle on the
low stream and keep decoding, bob (never capped) keeps the top stream, and when the cap is
lifted carol climbs back to the top; then 5 % of her packets are dropped at random and
NACK/RTX must keep her decoding like bob — all on the same m-section (no renegotiation). The
figures (time to settle and to recover, frame rates, freezes) are printed; the bounds below
are generous because the machine is shared: they check direction and level, not speed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.netns import require_netns, scenario_result
from tests.peers.firefox import require_firefox
from tests.peers.harness import require_chromium
from tests.simulcast_netns import CAP_KBIT

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def mostly_low(watched: dict[str, Any]) -> bool:
    """The capped subscriber decoded the low layer (≤ 400 px wide) for at least 70 % of the
    window, sampled every 0.5 s. Not one instant: a probe that gets through the link's queue
    can lift her a layer for a second or two before the estimate falls back (seen in CI:
    640 px at the window's last instant, 19.7 frames/s, no freeze)."""
    widths = watched["widths"]
    low = sum(1 for w in widths if 0 < w <= 400)
    return bool(widths) and low >= 0.7 * len(widths)


def assert_low_while_capped_and_back_after(result: dict[str, Any]) -> None:
    """carol on the low stream (320 px) while capped, decoding at a good share of the rate
    bob (uncapped, on the top stream) does: the low stream fits the link, so it neither
    stalls nor freezes for long — each of its keyframes takes a few hundred ms through
    400 kbit/s, which Chromium counts as a freeze (figures: 0-2 per 10 s, 12-20 frames/s
    against bob's 20). Lifted: back on the top stream, decoding like bob. All on the same
    m-section, and no page reported a problem."""
    capped, after = result["capped"], result["after"]
    assert mostly_low(capped["carol"]), result
    assert capped["bob"]["width"] >= 960, result
    assert capped["carol"]["fps"] >= 0.5 * capped["bob"]["fps"] > 0, result
    assert after["carol"]["width"] >= 960, result
    assert after["carol"]["fps"] >= 0.5 * after["bob"]["fps"] > 0, result
    assert not result["renegotiated"], result
    assert result["problems"] == [], result


def test_capped_chromium_subscriber_settles_on_the_low_stream_and_climbs_back() -> None:
    require_netns()
    require_chromium()
    result = scenario_result("tests.simulcast_netns")
    print(
        f"capped at {result['settleSeconds']} s on the low stream, back on the top"
        f" {result['recoverSeconds']} s after the cap was lifted"
    )
    assert_low_while_capped_and_back_after(result)
    # 5 % random loss: NACK/RTX keeps carol within 10 % of bob's frames, on the top stream,
    # and her estimate does not collapse.
    lossy = result["lossy"]
    print(
        f"5 % loss: carol {lossy['carol']['fps']} frames/s vs bob {lossy['bob']['fps']},"
        f" {result['lossyRetransmitted']} retransmitted, estimate {result['lossyEstimate']}"
    )
    assert result["lossyRetransmitted"] > 0, result
    assert lossy["carol"]["fps"] >= 0.9 * lossy["bob"]["fps"] > 0, result
    assert lossy["carol"]["width"] >= 960, result


def test_capped_firefox_subscriber_settles_on_the_low_stream_and_climbs_back() -> None:
    """The same capped link with Firefox ESR as carol (alice and bob stay Chromium): her
    estimate comes from Firefox's own transport-cc feedback, so the server's probes are
    judged on another engine's arrival times. Capped, she settles on the low stream and the
    probes do not lift her for long; lifted, a probe brings her back to the top stream."""
    require_netns()
    require_chromium()
    require_firefox()
    result = scenario_result("tests.simulcast_netns", "firefox")
    capped = result["capped"]
    print(
        f"Firefox: capped at {result['settleSeconds']} s on the low stream, back on the top"
        f" {result['recoverSeconds']} s after the cap was lifted; capped fps"
        f" {capped['carol']['fps']} vs {capped['bob']['fps']},"
        f" {result['cappedCounters']['probes']} probe clusters while capped, her estimate at most"
        f" {max(capped['carolEstimates'])}"
    )
    assert_low_while_capped_and_back_after(result)
    # No probe got through the cap: her estimate, read every 0.5 s of the capped window, never
    # reached the probes' target (what the middle stream needs, with margin: ≈ 540 kbit/s; at
    # most 317-358k in 7 runs, every capped probe failed).
    assert max(capped["carolEstimates"]) < 1.25 * CAP_KBIT * 1000, result
    assert result["cappedCounters"]["probes"] >= 1, result  # failed ones repeat within 4 s


def test_capped_aiortc_viewer_is_throttled_by_its_receiver_reports() -> None:
    """The same capped link with an aiortc WHEP viewer as carol: aiortc sends receiver
    reports and no transport-cc feedback, so the loss its reports give is her only
    congestion signal (before, she had none: she stayed on the 1280 px stream through the
    400 kbit/s cap, 70 % of it lost, her decoder failing on every frame). Capped, her
    estimate falls and she is moved down to the low stream; trials up (no probing without
    transport-cc) fail back to the layer that held; lifted, trials bring her back to the
    top."""
    require_netns()
    require_chromium()
    result = scenario_result("tests.simulcast_netns", "aiortc")
    capped, after = result["capped"], result["after"]
    print(
        f"aiortc: on the low stream {result['settleSeconds']} s after the cap, back on the top"
        f" {result['recoverSeconds']} s after it was lifted; capped fps"
        f" {capped['carol']['fps']} vs {capped['bob']['fps']}, layers forwarded"
        f" {capped['carolLayers']}, estimate at most {max(capped['carolEstimates'])}"
    )
    # The scenario waited for her on the low stream (≤ 400 px decoded, layer 0 forwarded)
    # once capped, and for the top stream forwarded and decoded once lifted. Here: the
    # reports' loss lowered her estimate (it never grows past its 300k start), and she was on
    # the top stream for at most half the capped window (before: all of it). Without probing
    # the top stream is still tried now and then and takes ~3 s of reports to fail: 0-1 of 20
    # samples in 3 runs, at most ~16 % expected once the 16 s back-off is reached. aiortc's own
    # decoding through the cap is printed, not asserted: it leans on keyframes (PLI), and
    # each takes a second through 400 kbit/s (0.7-24 frames/s in those runs).
    layers = capped["carolLayers"]
    assert max(capped["carolEstimates"]) < 300_000, result
    assert sum(1 for layer in layers if layer == 2) <= 0.5 * len(layers), result
    assert capped["bob"]["width"] >= 960, result
    assert after["carol"]["fps"] > 0, result
    assert result["problems"] == [], result


@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_capped_chromium_subscriber_gets_a_lower_svc_spatial_layer(codec: str) -> None:
    """The same capped link with a VP9 or AV1 SVC publisher (``L3T3_KEY``: one stream, three
    spatial layers): carol's planner lowers her spatial layer (the SFU drops the layers above
    it, no keyframe needed going down) and she keeps decoding 320 px; bob keeps 1280 px;
    when the cap is lifted she climbs back at a keyframe."""
    require_netns()
    require_chromium()
    result = scenario_result("tests.simulcast_netns", "svc", codec)
    capped = result["capped"]
    print(
        f"{codec} SVC: capped at {result['settleSeconds']} s on spatial layer 0, back on the top"
        f" {result['recoverSeconds']} s after the cap was lifted; capped fps"
        f" {capped['carol']['fps']} vs {capped['bob']['fps']}"
    )
    assert result["svcLayers"] == 3, result
    assert_low_while_capped_and_back_after(result)


def test_a_publisher_whose_uplink_starts_thin_brings_bob_to_the_top_once_it_grows() -> None:
    """The cause of this module's (and tests/test_site_layers.py's) old flake, made certain:
    libwebrtc starts its uplink estimate at 300 kbit/s and adds the h and f streams as it
    grows, which on a loaded machine could take longer than the server's STREAM_TIMEOUT +
    PAUSE_AFTER (7 s). The server took the unsent streams for ones the encoder leaves out,
    dynacast (nobody needing them) told the page to stop them, an inactive encoding never
    starts again, and bob stayed on a lower stream for good (640 px after 90 s). Here every
    uplink to the SFU is held at 200 kbit/s for 12 s while alice starts publishing, so her
    Chromium sends only its low stream(s); once lifted, bob must decode the top stream
    (its estimate then grows for ~30 s before it adds f: the bound is 90 s)."""
    require_netns()
    require_chromium()
    result = scenario_result("tests.simulcast_netns", "thin")
    thin = result["thin"]
    # the set-up did what it is for: the top stream was not arriving under the cap, and the
    # server still announces it (it is alice's to start)
    assert 2 in thin["missing"] and thin["default"] < 2, thin
    assert all("f" in rids for rids in thin["told"].values()), thin
    assert result["top"]["width"] >= 960, result
    assert result["problems"] == [], result
