#!/usr/bin/env python3
"""Chromium or Firefox ESR as a peer of the interop matrix (tests/interop/README.md).

The browser loads ``{base-url}/interop.html`` (tests/interop/page/, served next to the site by
the matrix's server), which runs the role through the site's own module and speaks the line
protocol by POSTing each line to a small HTTP collector in this process; this process prints
those lines on stdout unchanged and hands ``stop``/``post`` from stdin to the page (it polls
``GET /cmd``). Chromium is driven by Playwright (Debian's /usr/bin/chromium); Firefox runs
headless on its own, without an automation protocol. Imports nothing from trio_sfu.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import queue
import shlex
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

if __package__:
    from . import common
    from .chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV
    from .firefox import find_firefox, headless_firefox
else:
    import common  # run as a script: tests/peers is sys.path[0]
    from chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV
    from firefox import find_firefox, headless_firefox

STOP_GRACE = 20.0  # seconds the page gets to STOP/DELETE and send its result


class Collector:
    """Lines from the page (POST /line) go to stdout; commands for it wait in a queue."""

    def __init__(self) -> None:
        self.commands: queue.Queue[str] = queue.Queue()
        self.result = threading.Event()
        self.result_line: dict[str, Any] | None = None
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    line = json.loads(body)
                except ValueError:
                    line = {"type": "log", "text": f"garbage from the page: {body[:200]!r}"}
                collector.on_line(line)
                self._reply(b"")

            def do_GET(self) -> None:
                try:
                    command = collector.commands.get_nowait()
                except queue.Empty:
                    command = ""
                self._reply(command.encode())

            def _reply(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on_line(self, line: dict[str, Any]) -> None:
        if line.get("type") == "log":
            common.log("page:", line.get("text"))
        elif line.get("type") == "result":
            self.result_line = line
            self.result.set()
        else:
            common.emit(line)


def page_url(args: argparse.Namespace, collector: Collector) -> str:
    query = urllib.parse.urlencode({"role": args.role, "room": args.room, "id": args.id,
                                    "collect": collector.url})
    return f"{args.base_url}/interop.html?{query}"


def relay(args: argparse.Namespace, collector: Collector, stdin: common.StdinLines,
          alive: Any) -> dict[str, Any]:
    """Hand stdin's commands to the page until it is told to stop; return its result line."""
    deadline = time.monotonic() + args.timeout
    stop_sent = False
    while not collector.result.is_set():
        if not alive():
            return {"type": "result", "ok": False, "errors": ["the browser exited"]}
        try:
            message = stdin.get(0.2)
        except common.StdinClosed:
            message = {"type": "stop"}
        if time.monotonic() >= deadline and not stop_sent:
            common.log("--timeout passed: stopping the page")
            message = {"type": "stop"}
        if message is not None and message.get("type") == "do" and not stop_sent:
            collector.commands.put(f"do {message['what']}")  # a tracks publisher's action
        elif message is not None and message.get("type") in ("stop", "post") and not stop_sent:
            collector.commands.put(str(message["type"]))
            if message["type"] == "stop":
                stop_sent = True
                deadline = time.monotonic() + STOP_GRACE
        elif stop_sent and time.monotonic() >= deadline:
            return {"type": "result", "ok": False,
                    "errors": [f"no result from the page {STOP_GRACE:.0f} s after stop"]}
    assert collector.result_line is not None
    return collector.result_line


def run_chromium(args: argparse.Namespace, collector: Collector,
                 stdin: common.StdinLines) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra,
                                     headless=True, timeout=30_000)
        try:
            page = browser.new_context().new_page()
            page.on("console", lambda m: common.log(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: common.log(f"pageerror: {e}"))
            page.goto(page_url(args, collector), wait_until="load", timeout=30_000)

            def alive() -> bool:
                page.wait_for_timeout(1)  # lets Playwright dispatch console events
                return browser.is_connected()

            return relay(args, collector, stdin, alive)
        finally:
            browser.close()


def run_firefox(args: argparse.Namespace, collector: Collector,
                stdin: common.StdinLines) -> dict[str, Any]:
    firefox = find_firefox()
    if firefox is None:
        return {"type": "result", "ok": False, "errors": ["firefox-esr not installed"]}
    with (
        tempfile.TemporaryDirectory(prefix="interop-firefox-") as home,
        headless_firefox(firefox, page_url(args, collector), Path(home), sys.stderr) as fox,
    ):
        return relay(args, collector, stdin, lambda: fox.poll() is None)


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--browser", choices=("chromium", "firefox"), required=True)
    p.add_argument("--role", choices=("subscriber", "publisher", "whep", "tracks"),
                   required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    args.base_url = args.base_url.rstrip("/")
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "result", "ok": False, "errors": [reason]}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + STOP_GRACE + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(STOP_GRACE + 10, "stdin closed and it did not stop"))
    collector = Collector()
    run = run_chromium if args.browser == "chromium" else run_firefox
    try:
        result = run(args, collector, stdin)
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
