"""Simulcast layers of an offer in quality order (RFC 8853 streams → selector stream index).

RFC 8853 does not order the streams of ``a=simulcast:send`` by quality, but the layer
selector (:mod:`trio_sfu.proto.layers`) and the allocator need "index 0 = lowest". The order
is taken, most reliable first, from:

1. the ``a=rid`` restrictions (RFC 8851 §5: ``max-width``/``max-height``/``max-fs``/``max-br``)
   when every stream has one of the same kind;
2. well-known rid names: ``q``/``h``/``f`` (libwebrtc, the demo site: quarter/half/full),
   ``l``/``m``/``h`` and ``low``/``mid``/``high``, when every rid is of one scheme;
3. otherwise the offer's order, which is the ``sendEncodings`` order browsers use (lowest first
   by the common convention, as Chromium's and Firefox's offers in ``tests/fixtures/sdp``).

Only the first alternative of each stream counts (browsers never offer more than one).
"""

from __future__ import annotations

from ..sdp import MediaSection

__all__ = ["simulcast_layers"]

_SIZE_KEYS = ("max-width", "max-height", "max-fs", "max-br")
_SCHEMES: tuple[tuple[str, ...], ...] = (("q", "h", "f"), ("l", "m", "h"), ("low", "mid", "high"))


def simulcast_layers(m: MediaSection) -> list[str]:
    """The send rids of a media section, lowest quality first (empty without simulcast)."""
    if m.simulcast is None or not m.simulcast.send:
        return []
    declared = {r.id: r for r in m.rids if r.direction == "send"}
    rids = [alts[0].rid for alts in m.simulcast.send if alts and alts[0].rid in declared]
    for key in _SIZE_KEYS:
        values: dict[str, int] = {}
        for rid in rids:
            raw = declared[rid].restrictions.get(key, "")
            if raw.isascii() and raw.isdigit() and len(raw) <= 12:
                values[rid] = int(raw)
        if len(values) == len(rids):
            return sorted(rids, key=lambda r: values[r])  # stable: ties keep offer order
    for scheme in _SCHEMES:
        if all(r in scheme for r in rids):
            return sorted(rids, key=scheme.index)
    return rids
