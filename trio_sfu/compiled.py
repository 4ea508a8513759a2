"""The forwarding path's modules that may be compiled with mypyc, and which of them are.

trio-sfu is pure Python, and that path is what ``pip install`` gives and what the test suite
runs. The modules below — the per-packet work of ingest (the peer core, SRTP, the codecs'
descriptors), forwarding, receiver statistics, transport-cc and the bandwidth estimator, none
of which awaits anything — can also be
compiled to C extensions with mypyc (issue 10: "if a compiled path is used, the pure-Python
path stays and is tested, pip install works without a compiler, and the README says which
is in use"). An extension module sits beside its ``.py`` and Python imports it first, so the
same source runs either way:

* a checkout: ``scripts/compile`` (in place; ``scripts/compile --clean`` goes back);
* an installed package: ``pip install -c constraints.txt . mypy wheel``, then
  ``TRIO_SFU_COMPILE=1 pip install --no-build-isolation --no-deps --force-reinstall .`` with
  a C compiler (``setup.py``; mypyc type-checks against the installed dependencies).

Measured in docs/benchmarks.md ("Compiled with mypyc"). What a compiled module may not do:
read ``__slots__`` from its class at run time (there is none: the slot names live in a
module constant) or be subclassed or monkey-patched by interpreted code. Their module
constants are annotated ``Final``: mypyc then inlines a literal one and keeps any other in a
C static, where a plain module global costs a dictionary lookup on every use (4.6 % of the
instructions of a forwarded packet, 5 % of a packet taken in: docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
from typing import Final

__all__ = ["COMPILED_MODULES", "compiled_modules"]

#: One list for ``scripts/compile``, ``setup.py`` and the start-up log. Only modules without
#: ``async def``: Trio's tasks stay interpreted.
COMPILED_MODULES: Final = (
    "trio_sfu.proto.bwe",
    "trio_sfu.proto.codecs.av1_dd",
    "trio_sfu.proto.codecs.vp8",
    "trio_sfu.proto.codecs.vp9",
    "trio_sfu.proto.layers",
    "trio_sfu.proto.peer.core",
    "trio_sfu.proto.receive_stats",
    "trio_sfu.proto.rtcp._common",
    "trio_sfu.proto.rtcp.compound",
    "trio_sfu.proto.rtcp.feedback",
    "trio_sfu.proto.rtcp.reports",
    "trio_sfu.proto.rtcp.transport_cc",
    "trio_sfu.proto.rtp.audio_level",
    "trio_sfu.proto.rtp.packet",
    "trio_sfu.proto.rtp.rewriter",
    "trio_sfu.proto.srtp",
    "trio_sfu.proto.twcc",
    "trio_sfu.rtc.counters",
    "trio_sfu.rtc.udp_path",
    "trio_sfu.sfu.feedback.cache",
    "trio_sfu.sfu.feedback.keyframe",
    "trio_sfu.sfu.feedback.nack",
    "trio_sfu.sfu.feedback.rtx",
    "trio_sfu.sfu.feedback.send_stats",
    "trio_sfu.sfu.groups",
    "trio_sfu.sfu.track",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` that run compiled in this process (each is
    imported): an extension module's ``__file__`` does not end in ``.py``."""
    return [
        name
        for name in COMPILED_MODULES
        if not str(importlib.import_module(name).__file__).endswith(".py")
    ]
