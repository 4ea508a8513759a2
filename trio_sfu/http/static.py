"""The demo site: files under ``--site-dir`` served as-is at ``/`` (no build step).

The catch-all route would also match API paths for methods the API does not take (``GET
/pub/r/id``), so those are answered 405 here, as if the site were not there. Paths are resolved
and must stay inside the site directory (symlinks included); dot-files are never served.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from quart import Blueprint, Response, current_app, request, send_file
from werkzeug.exceptions import MethodNotAllowed, NotFound

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
_NOT_STATIC = frozenset({"GET", "HEAD", "OPTIONS"})


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


def site_blueprint(site_dir: Path | None) -> Blueprint:
    bp = Blueprint("site", __name__)

    async def serve(path: str) -> Response:
        if site_dir is None:
            raise NotFound("no demo site is configured (--site-dir)")
        target = resolve(site_dir, path)
        if target is None:
            raise NotFound(f"/{path} not found")
        response = await send_file(target, mimetype=content_type(target), conditional=True)
        # The demo changes while developing it; let the ETag revalidate instead of guessing.
        response.headers["Cache-Control"] = "no-cache"
        return response

    @bp.get("/")
    async def index() -> Response:
        return await serve("")

    @bp.get("/<path:path>")
    async def file(path: str) -> Response:
        adapter = current_app.create_url_adapter(request)
        if adapter is not None:
            methods = set(adapter.allowed_methods("/" + path)) - _NOT_STATIC
            if methods:  # an API route lives here, just not for GET
                raise MethodNotAllowed(valid_methods=sorted(methods | {"OPTIONS"}))
        return await serve(path)

    return bp
