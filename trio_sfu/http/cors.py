"""CORS for pages served elsewhere that call our API (Fetch standard, "CORS protocol").

``application/sdp`` is not a CORS-safelisted content type, so every browser POST from another
origin is preceded by a preflight OPTIONS; it is answered here, before routing reaches a handler
and so before the SFU is touched. With no origin configured nothing is added and browsers keep
the API same-origin.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from quart import Quart, Response, request

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, If-Match"
# WHIP/WHEP answers carry the session URL, its ETag and the ICE servers (RFC 9725).
EXPOSE_HEADERS = "Location, ETag, Link"
PREFLIGHT_MAX_AGE = "600"


def allowed_origin(origins: Collection[str], origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None."""
    if "*" in origins:
        return "*"
    if origin is not None and origin.lower().rstrip("/") in origins:
        return origin
    return None


def install_cors(app: Quart, origins: Sequence[str]) -> None:
    if not origins:
        return
    any_origin = "*" in origins
    allowed = frozenset(origins)

    def allow_origin(origin: str | None) -> str | None:
        return allowed_origin(allowed, origin)

    @app.before_request
    async def preflight() -> Response | None:
        if (
            request.method != "OPTIONS"
            or "Access-Control-Request-Method" not in request.headers
            or request.routing_exception is not None  # unknown path: let it 404
        ):
            return None
        response = Response("", status=204)
        if allow_origin(request.headers.get("Origin")) is not None:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response

    @app.after_request
    async def add_headers(response: Response) -> Response:
        value = allow_origin(request.headers.get("Origin"))
        if not any_origin:
            response.vary.add("Origin")  # the answer depends on who asks (caches must know)
        if value is not None:
            response.headers["Access-Control-Allow-Origin"] = value
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response
