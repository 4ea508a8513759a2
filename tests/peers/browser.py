"""A remote-controlled headless Chromium: named pages, JS evaluated on command.

Run as a subprocess by ``tests/peers/browser_client.py``. One JSON object per line on stdin:
``{"id": 1, "op": "open", "page": "alice", "url": "http://127.0.0.1:8080/"}``,
``{"id": 2, "op": "eval", "page": "alice", "js": "async (arg) => ...", "arg": ...}``,
``{"id": 3, "op": "close", "page": "alice"}``; each gets ``{"id": n, "ok": true, "result": ...}``
or ``{"id": n, "ok": false, "error": "..."}`` on stdout. Page console output and errors go to
stderr, prefixed with the page name. Exits on stdin EOF. Imports nothing from trio_sfu.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from typing import Any

from playwright.sync_api import Page, sync_playwright

if __package__:
    from .chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV
else:
    from chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    pages: dict[str, Page] = {}
    with sync_playwright() as pw:
        extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra, headless=True, timeout=30_000
        )
        log("browser: launched chromium", browser.version)
        reply({"id": 0, "ok": True, "result": browser.version})
        context = browser.new_context()
        try:
            for line in sys.stdin:
                if not line.strip():
                    continue
                request = json.loads(line)
                rid = request.get("id")
                try:
                    op = request["op"]
                    name = request.get("page", "")
                    if op == "open":
                        page = context.new_page()
                        page.on("console", lambda m, n=name: log(f"[{n}] {m.type}: {m.text}"))
                        page.on("pageerror", lambda e, n=name: log(f"[{n}] pageerror: {e}"))
                        page.goto(request["url"], wait_until="load", timeout=30_000)
                        pages[name] = page
                        result: Any = page.url
                    elif op == "eval":
                        result = pages[name].evaluate(request["js"], request.get("arg"))
                    elif op == "close":
                        pages.pop(name).close()
                        result = None
                    else:
                        raise ValueError(f"unknown op {op!r}")
                    reply({"id": rid, "ok": True, "result": result})
                except Exception as exc:
                    log("browser: request failed", traceback.format_exc())
                    reply({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
