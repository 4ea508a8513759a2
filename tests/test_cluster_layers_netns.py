"""Simulcast across pods on a capped link, with real browsers (issue 11's cluster proof in CI).

tests/cluster_layers_netns.py runs Redis, NATS, two pods, a Chromium simulcast publisher and
an uncapped Chromium subscriber on pod a, and a Chromium subscriber on pod b, in a private
network namespace; pod b's UDP output then passes a 400 kbit/s ``tc htb`` class. The capped
subscriber on pod b must settle on the low stream (pod b receives it through the relay) and
keep decoding, the uncapped one on pod a keeps the top stream, and when the cap is lifted the
capped one climbs back. Figures printed; bounds generous (direction and level, not speed).
"""

from __future__ import annotations

import pytest

from tests.netns import require_netns, scenario_result
from tests.peers.harness import require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_capped_subscriber_on_pod_b_settles_on_the_low_stream_and_climbs_back() -> None:
    require_netns()
    require_chromium()
    result = scenario_result("tests.cluster_layers_netns")
    capped, after = result["capped"], result["after"]
    print(
        f"across pods: capped at {result['settleSeconds']} s on the low stream, back on the"
        f" top {result['recoverSeconds']} s after the cap was lifted; capped fps carol"
        f" {capped['carol']['fps']} vs bob {capped['bob']['fps']}"
    )
    assert 0 < capped["carol"]["width"] <= 400, result
    assert capped["bob"]["width"] >= 960, result
    assert capped["carol"]["fps"] >= 0.5 * capped["bob"]["fps"] > 0, result
    assert after["carol"]["width"] >= 960, result
    assert after["carol"]["fps"] >= 0.5 * after["bob"]["fps"] > 0, result
