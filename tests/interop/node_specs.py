"""werift and node-datachannel (npm) as rows of the interop matrix.

Each stack runs in its own node process (``tests/peers/node_peers/``, pinned by its
package-lock.json, installed by ``scripts/setup-node``) and speaks the matrix's peer protocol
(README.md here). Neither has codecs: GStreamer (``tests/peers/gst_rtp_source.py``, Debian's
python3) feeds their publishers VP8 and Opus RTP, and ``tests/peers/vp8_decoder.py`` (PyAV,
run by this interpreter) decodes what their subscribers and viewers receive.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from tests.interop.driver import PeerSpec
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
