"""The demo site: files under ``--site-dir`` served as-is at ``/`` (no build step).

The site is the fallback for GET/HEAD requests no route matched, rather than a catch-all route:
routing then stays honest, so a path nothing serves is 404 whatever the method, and an API path
asked with the wrong method (``GET /pub/r/id``) is 405. Paths are resolved and must stay inside
the site directory (symlinks included); dot-files are never served.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from quart import Quart, Response, g, has_websocket_context, request, send_file
from werkzeug.exceptions import HTTPException, NotFound

from trio_sfu.http.errors import error_response, http_error_response

# Explicit types for what the site ships; the platform's mimetypes table varies (Python 3.11
# says application/javascript, some /etc/mime.types lack .mjs or .wasm).
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".md": "text/markdown",
}


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def resolve(site_dir: Path, path: str) -> Path | None:
    """The file for URL path ``path`` inside ``site_dir``, or None."""
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None
    try:
        root = site_dir.resolve()
        target = root.joinpath(*parts).resolve()
        if not target.is_relative_to(root):
            return None
        if target.is_dir():
            target = target / "index.html"
        return target if target.is_file() else None
    except (OSError, ValueError):  # name too long, loops, bad encodings: not a file we serve
        return None


def install_site(app: Quart, site_dir: Path | None) -> None:
    async def serve(path: str) -> Response:
        g.static = True  # the access log keeps site files at debug
        if site_dir is None:
            return error_response(404, "404 no demo site is configured (--site-dir)")
        target = resolve(site_dir, path)
        if target is None:
            return error_response(404, "404 Not Found")
        try:
            response = await send_file(target, mimetype=content_type(target), conditional=True)
        except HTTPException as error:  # e.g. 416 for a Range we cannot satisfy
            return http_error_response(error)
        # The demo changes while developing it; let the ETag revalidate instead of guessing.
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/")
    async def index() -> Response:
        return await serve("")

    @app.errorhandler(NotFound)
    async def site_file(error: NotFound) -> Response:
        if has_websocket_context():  # no WebSocket here: the upgrade gets a plain 404
            return http_error_response(error)
        if request.method not in ("GET", "HEAD") or request.routing_exception is not error:
            return http_error_response(error)
        return await serve(request.path)
