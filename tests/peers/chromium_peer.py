#!/usr/bin/env python3
"""Headless Chromium as an independent WebRTC peer, speaking the JSON line protocol.

Chromium is the peer trio-sfu must work with in production, so the interop tests drive the
real thing: Debian's /usr/bin/chromium through Playwright's sync API (never a downloaded
browser). The page (chromium_page.js) is served from 127.0.0.1 because getUserMedia needs a
secure context and localhost counts as one. This script only relays: offer out, answer in,
status polled into progress lines, result out. See DEVELOPERS.md, "Browser and peer tests".
"""

from __future__ import annotations

import http.server
import os
import shlex
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common  # imported by the tests as tests.peers.<module>
else:
    import common  # run as a script: tests/peers is sys.path[0]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    # Fake camera, auto-granted permission, loopback candidates, raw IPs instead of mDNS names.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # Running headless as root on a closed network.
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Extra switches for debugging, e.g. "--enable-logging=stderr --v=1" (with DEBUG=pw:browser,
# Playwright copies Chromium's own stderr to ours).
EXTRA_ARGS_ENV = "TRIO_SFU_CHROMIUM_ARGS"

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE_JS = os.path.join(HERE, "chromium_page.js")
PAGE_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>trio-sfu test peer</title>
<link rel="icon" href="data:,"></head>
<body><video id="remote" autoplay muted playsinline width="320" height="240"></video>
<script src="/chromium_page.js"></script></body></html>
"""

PROGRESS_EVERY = 1.0  # seconds between progress lines
POLL = 0.2  # seconds between status polls


def serve_page(verbose: bool) -> http.server.ThreadingHTTPServer:
    """Serve exactly the page and its script on 127.0.0.1 (an ephemeral port)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                body, ctype = PAGE_HTML, "text/html; charset=utf-8"
            elif path == "/chromium_page.js":
                with open(PAGE_JS, "rb") as f:
                    body, ctype = f.read(), "text/javascript; charset=utf-8"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            if verbose:
                common.log("http:", format % args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class Status:
    """The page's last status, so a watchdog can still say how far the checks got."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}

    def fallback(self, reason: str) -> dict[str, Any]:
        st = self.last
        return common.result_line(
            ok=False,
            datachannel=st.get("datachannel"),
            frames_decoded=int(st.get("framesDecoded", 0)),
            selected_pair=None,
            errors=[reason],
            phase=st.get("phase"),
        )


def drive(browser: Any, url: str, args: Any, stdin: common.StdinLines, deadline: float,
          status: Status) -> dict[str, Any]:
    """Run the whole check in one page; returns the result object."""
    from playwright.sync_api import Error as PlaywrightError

    page = browser.new_page()
    page.on("console", lambda m: common.log(f"console.{m.type}: {m.text}"))
    page.on("pageerror", lambda e: common.log(f"pageerror: {e}"))
    page.on("crash", lambda _p: common.log("page crashed"))
    page.set_default_timeout(max(1000.0, (deadline - time.monotonic()) * 1000))
    page.goto(url)
    page.wait_for_function("() => window.peer !== undefined")

    opts = {
        "messages": args.messages,
        "maxSize": args.max_size,
        "seed": args.seed,
        "video": args.video,
        "datachannel": args.datachannel,
        "minFrames": args.min_frames,
        "timeout": max(1.0, deadline - time.monotonic()),
        "width": args.width,
        "height": args.height,
    }
    reason: str | None = None
    try:
        offer = page.evaluate("o => window.peer.createOffer(o)", opts)
        common.emit({"type": "offer", "sdp": common.filter_candidates(offer, args.all_candidates)})
        answer = stdin.wait_for("answer", deadline)
        if answer is None:
            reason = "timed out waiting for the answer on stdin"
        elif not isinstance(answer.get("sdp"), str):
            reason = "answer line has no 'sdp' string"
        else:
            page.evaluate("s => window.peer.applyAnswer(s)", answer["sdp"])
            page.evaluate("() => window.peer.start()")
            reason = poll(page, stdin, deadline, status)
    except common.StdinClosed:
        reason = "stdin closed before the answer arrived"
    except PlaywrightError as exc:
        reason = f"page error: {exc.message.splitlines()[0] if exc.message else exc}"
    try:
        result: dict[str, Any] = page.evaluate("r => window.peer.result(r)", reason)
        return result
    except PlaywrightError as exc:
        return status.fallback(f"{reason or 'done'}; result() failed: {exc.message}")


def poll(page: Any, stdin: common.StdinLines, deadline: float, status: Status) -> str | None:
    """Poll the page until done; returns the reason for stopping early, or None."""
    last_emit = 0.0
    last_key: Any = None
    while True:
        st = page.evaluate("() => window.peer.status()")
        status.last = st
        now = time.monotonic()
        key = (st["phase"], str(st["datachannel"]), st["framesDecoded"], st["connectionState"])
        if key != last_key and now - last_emit >= PROGRESS_EVERY:
            common.emit({"type": "progress", **st})
            last_emit, last_key = now, key
        if st["done"]:
            return None
        if stdin.closed.is_set():
            return "stdin closed before the checks finished"
        if now >= deadline:
            return "timeout"
        page.wait_for_timeout(POLL * 1000)


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    args = common.parse_args(__doc__.splitlines()[0], argv)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    deadline = time.monotonic() + args.timeout
    status = Status()
    final = common.FinalLine(status.fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(common.EOF_GRACE, "stdin closed and the page did not stop"))

    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        final.finish(status.fallback(f"playwright is not importable: {exc}"))
        return 1
    if not os.access(CHROMIUM, os.X_OK):
        final.finish(status.fallback(f"{CHROMIUM} not installed (Debian package chromium)"))
        return 1

    server = serve_page(args.verbose)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as pw:
            extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra, headless=True,
                timeout=30_000,
            )
            common.log("launched chromium", browser.version)
            try:
                # Report before tearing down: closing the browser can take a while.
                final.finish(drive(browser, url, args, stdin, deadline, status))
            finally:
                browser.close()
    except Exception as exc:
        common.log("failed:", repr(exc))
        final.finish(status.fallback(f"{type(exc).__name__}: {exc}"))
    finally:
        server.shutdown()
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
