"""Hypothesis profiles for the fuzz suites.

CI runs a bounded number of examples per property (``FUZZ_EXAMPLES``, default 200); a longer
hunt is ``FUZZ_EXAMPLES=20000 scripts/test fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "trio-sfu",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("trio-sfu")
