"""How refusals look on the wire: a short body saying what is wrong, and the right status.

``text/plain`` for the signaling and site routes, JSON for the room lists that clients parse.
Nothing a client sends reaches the generic 500 path: SDP problems are 400, SFU refusals carry
their own status, and werkzeug's routing and body errors keep theirs.
"""

from __future__ import annotations

import json
import logging

from quart import Quart, Response, has_websocket_context, request, websocket
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import WebsocketMismatch

from trio_sfu.http.guard import AuthRefused
from trio_sfu.proto.errors import SdpError
from trio_sfu.sfu.errors import SfuError

log = logging.getLogger(__name__)


def current_path() -> str:
    """The path of the current HTTP request or WebSocket handshake."""
    return websocket.path if has_websocket_context() else request.path


def error_response(status: int, message: str) -> Response:
    """A refusal; in a WebSocket handshake it becomes the HTTP answer to the upgrade."""
    path = current_path()
    if path == "/rooms" or path.startswith("/rooms/"):
        text = json.dumps({"error": message, "status": status})  # ASCII-only
        return Response(text, status=status, content_type="application/json")
    # Messages may quote what the client sent; never let an unencodable character turn a
    # 4xx into a 500 while encoding the body.
    body = (message.rstrip("\n") + "\n").encode("utf-8", "backslashreplace")
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


def http_error_response(error: HTTPException) -> Response:
    if has_websocket_context() and isinstance(error, WebsocketMismatch | MethodNotAllowed):
        # An upgrade where only HTTP is served (whatever methods that path takes).
        return error_response(404, "404 no WebSocket is served at this path")
    if isinstance(error, WebsocketMismatch):
        response = error_response(426, "426 this path is a WebSocket: upgrade to it")
        response.headers["Upgrade"] = "websocket"
        response.headers["Connection"] = "Upgrade"
        return response
    status = error.code or 500
    description = error.description
    if description is None or description == type(error).description:
        description = error.name  # werkzeug's defaults are long HTML-minded sentences
    response = error_response(status, f"{status} {description}")
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value  # Allow (405), Retry-After, ...
    return response


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(SfuError)
    async def sfu_error(error: SfuError) -> Response:
        response = error_response(error.status, error.message)
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        if error.status >= 500:
            log.warning("request refused: %s", error.message, extra={"path": current_path()})
        return response

    @app.errorhandler(AuthRefused)
    async def auth_refused(error: AuthRefused) -> Response:
        response = error_response(error.status, f"{error.status} {error.message}")
        # RFC 6750 §3: a 401 MUST carry the challenge; on 403 it names insufficient_scope.
        response.headers["WWW-Authenticate"] = error.www_authenticate()
        return response

    @app.errorhandler(SdpError)
    async def sdp_error(error: SdpError) -> Response:
        return error_response(400, f"malformed SDP: {error}")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return http_error_response(error)
