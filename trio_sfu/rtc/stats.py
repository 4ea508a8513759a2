"""Per-peer counters: plain ints, bumped on the hot path, read by metrics and tests.

They live with the sans-IO peer core that bumps them (:mod:`trio_sfu.proto.peer`).
"""

from __future__ import annotations

from trio_sfu.proto.peer import PeerStats

__all__ = ["PeerStats"]
