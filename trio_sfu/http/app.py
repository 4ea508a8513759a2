"""The Quart-Trio application: signaling API, room lists, health, the demo site, CORS, errors.

Every refusal becomes a short body saying what is wrong — ``text/plain`` for the signaling and
site routes, JSON for the room lists that clients parse — and nothing a client sends reaches
the generic 500 path: SDP problems are 400, SFU refusals carry their own status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trio_sfu.http.cors import install_cors
from trio_sfu.http.limits import MAX_BODY, DrainUnreadBody
from trio_sfu.http.signaling import SfuApi, signaling_blueprint
from trio_sfu.http.static import site_blueprint
from trio_sfu.proto.errors import SdpError
from trio_sfu.sfu.errors import SfuError

log = logging.getLogger(__name__)
access_log = logging.getLogger("trio_sfu.http.access")

# A client that starts a body and stalls holds a request task; 10 s is plenty for 64 KiB.
BODY_TIMEOUT = 10


def create_app(
    sfu: SfuApi,
    *,
    cors_origins: Sequence[str] = (),
    site_dir: Path | None = None,
) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        BODY_TIMEOUT=BODY_TIMEOUT,
        JSON_SORT_KEYS=False,
    )
    app.register_blueprint(signaling_blueprint(sfu))

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok\n", content_type="text/plain")

    app.register_blueprint(site_blueprint(site_dir))
    install_access_log(app)
    install_cors(app, cors_origins)
    install_error_handlers(app)
    app.asgi_app = DrainUnreadBody(app.asgi_app)  # type: ignore[method-assign]
    return app


def install_access_log(app: QuartTrio) -> None:
    """One structured line per request (never per packet); health probes only at debug."""

    @app.before_request
    async def started() -> None:
        g.started = trio.current_time()

    @app.after_request
    async def finished(response: Response) -> Response:
        began = getattr(g, "started", None)
        extra = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "client": request.remote_addr,
        }
        if began is not None:
            extra["ms"] = round((trio.current_time() - began) * 1000, 1)
        level = logging.DEBUG if request.path == "/healthz" else logging.INFO
        access_log.log(
            level, "%s %s %s", request.method, request.path, response.status_code, extra=extra
        )
        return response


def error_response(status: int, message: str) -> Response:
    if request.path == "/rooms" or request.path.startswith("/rooms/"):
        text = json.dumps({"error": message, "status": status})  # ASCII-only
        return Response(text, status=status, content_type="application/json")
    # Messages may quote what the client sent; never let an unencodable character turn a
    # 4xx into a 500 while encoding the body.
    body = (message.rstrip("\n") + "\n").encode("utf-8", "backslashreplace")
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


def install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(SfuError)
    async def sfu_error(error: SfuError) -> Response:
        response = error_response(error.status, error.message)
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        if error.status >= 500:
            log.warning("request refused: %s", error.message, extra={"path": request.path})
        return response

    @app.errorhandler(SdpError)
    async def sdp_error(error: SdpError) -> Response:
        return error_response(400, f"malformed SDP: {error}")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        description = error.description
        if description is None or description == type(error).description:
            description = error.name  # werkzeug's defaults are long HTML-minded sentences
        response = error_response(status, f"{status} {description}")
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
