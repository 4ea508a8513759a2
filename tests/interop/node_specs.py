"""werift and node-datachannel (npm) as rows of the interop matrix, plus one scenario of theirs.

Each stack runs in its own node process (``tests/peers/node_peers/``, pinned by its
package-lock.json, installed by ``scripts/setup-node``) and speaks the matrix's peer protocol
(README.md here). Neither has codecs: GStreamer (``tests/peers/gst_rtp_source.py``, Debian's
python3) feeds their publishers VP8 and Opus RTP, and ``tests/peers/vp8_decoder.py`` (PyAV,
run by this interpreter) decodes what their subscribers and viewers receive.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
from typing import Any

from tests.interop.driver import (
    MIN_FRAMES,
    STEP_TIMEOUT,
    PeerSpec,
    fresh,
    protocol_args,
    running,
)
from tests.peers.harness import PEERS_DIR

NODE_DIR = os.path.join(PEERS_DIR, "node_peers")
DEBIAN_PYTHON = "/usr/bin/python3"
SOURCE_ELEMENTS = ("videotestsrc", "vp8enc", "rtpvp8pay", "audiotestsrc", "opusenc",
                   "rtpopuspay", "udpsink")


@functools.lru_cache(maxsize=4)
def node_package_missing(package: str) -> str | None:
    """None if a peer on npm ``package`` can run here, else what is missing."""
    node = shutil.which("node")
    if node is None:
        return "node not found (Debian package nodejs; scripts/setup-system)"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", package)):
        return f"npm package {package} not installed: run scripts/setup-node"
    probe = (
        f"import('{package}').then(() => process.exit(0), "
        "(e) => { console.error(e); process.exit(1); })"
    )
    done = subprocess.run([node, "--input-type=module", "-e", probe], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"npm package {package} does not load: {done.stderr.strip()[-300:]}"
    try:
        import av  # noqa: F401
    except ImportError:
        return "Python package av (PyAV) not installed (the test extra)"
    return gst_source_missing()


@functools.lru_cache(maxsize=1)
def gst_source_missing() -> str | None:
    """None if tests/peers/gst_rtp_source.py can run (GStreamer under Debian's python3)."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst; "
        f"Gst.init(None); print(' '.join(e for e in {SOURCE_ELEMENTS!r} "
        "if Gst.ElementFactory.find(e) is None))"
    )
    try:
        done = subprocess.run([DEBIAN_PYTHON, "-c", probe], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run {DEBIAN_PYTHON} (GStreamer feeds the publishers): {error}"
    packages = "python3-gi python3-gst-1.0 gstreamer1.0-plugins-{base,good} (scripts/setup-system)"
    if done.returncode != 0:
        return f"GStreamer Python bindings missing: {done.stderr.strip()[-200:]}; {packages}"
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()}; {packages}"
    return None


def node_spec(name: str, script: str, package: str) -> PeerSpec:
    node = shutil.which("node") or "node"
    path = os.path.join(NODE_DIR, script)
    return PeerSpec(
        name, ("subscriber", "publisher", "whep"),
        argv=lambda args: [node, path, *args, "--python", sys.executable],
        missing=lambda: node_package_missing(package),
    )


WERIFT = node_spec("werift", "werift_peer.mjs", "werift")
NODE_DATACHANNEL = node_spec("node_datachannel", "ndc_peer.mjs", "node-datachannel")
#: the publisher of :func:`held_whep_scenario`: werift over WHIP, holding the server's answer
WERIFT_WHIP = dataclasses.replace(WERIFT, name="werift_whip")


async def held_whep_scenario(viewer: PeerSpec, base_url: str) -> dict[str, Any]:
    """The WHEP viewer POSTs while the room's only WHIP publisher is certainly connecting.

    The matrix's ``whep`` scenario POSTs the moment the publisher's ``201`` arrives, which is a
    race on loopback (the publisher may be live by then). Here the werift publisher holds the
    server's answer (``--hold-answer``: no ICE check can have reached the server) until the
    viewer's POST is answered; the viewer must get ``201`` and then decode ≥ 60 frames
    (issue 8, must-have 6).
    """
    room = fresh("held")
    async with running(viewer, protocol_args("whep", base_url, room, fresh("viewer-"))) as v:
        await v.until("ready line", lambda: v.of_type("ready"))
        publisher_args = [*protocol_args("whip", base_url, room, fresh("whip-")), "--hold-answer"]
        async with running(WERIFT_WHIP, publisher_args) as pub:
            posted = await pub.until("the WHIP POST answered", lambda: pub.of_type("posted"))
            assert posted[0]["status"] == 201, pub.fail(f"WHIP POST got {posted[0]}")
            await v.peer.send({"type": "post"})
            viewed = await v.until("posted line", lambda: v.of_type("posted"))
            assert not pub.of_type("connected"), pub.fail("connected before its answer applied")
            await pub.peer.send({"type": "apply"})
            assert viewed[0]["status"] == 201, v.fail(f"WHEP POST got {viewed[0]}")
            await pub.until("the WHIP publisher connected", lambda: pub.of_type("connected"))
            await v.until(f"{MIN_FRAMES} decoded frames",
                          lambda: v.decoded.get("whep", 0) >= MIN_FRAMES, STEP_TIMEOUT)
            v.check_healthy()
            pub.check_healthy()
        return {"decoded": dict(v.decoded)}
