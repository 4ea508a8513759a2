"""The Quart-Trio application: signaling API, WHIP/WHEP, room lists, health, the demo site,
CORS, errors, token checks, and one access-log line per request."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio

from trio_sfu.auth import ANY_ROOM, TokenVerifier
from trio_sfu.config import IceServer
from trio_sfu.http.cors import install_cors
from trio_sfu.http.errors import install_error_handlers
from trio_sfu.http.forwarding import Forwarder
from trio_sfu.http.guard import Guard, forbidden
from trio_sfu.http.ice_servers import IceServerList, ice_server_list
from trio_sfu.http.limits import MAX_BODY, AdmitJoins, DrainUnreadBody, JoinRateLimits
from trio_sfu.http.sessions import Sessions
from trio_sfu.http.signaling import SfuApi, signaling_blueprint
from trio_sfu.http.static import install_site
from trio_sfu.http.whip import WhipSfuApi, whip_blueprint

access_log = logging.getLogger("trio_sfu.http.access")

# A client that starts a body and stalls holds a request task; 10 s is plenty for 64 KiB.
BODY_TIMEOUT = 10


class HttpSfuApi(SfuApi, WhipSfuApi, Protocol):
    """Everything the HTTP layer serves: the seed API and WHIP/WHEP, always both (a missing
    route must be a failure a test sees, not a 404 a client has to guess about)."""


def create_app(
    sfu: HttpSfuApi,
    *,
    cors_origins: Sequence[str] = (),
    site_dir: Path | None = None,
    tokens: TokenVerifier | None = None,
    ice_servers: Sequence[IceServer] | IceServerList = (),
    sessions: Sessions | None = None,
    forwarder: Forwarder | None = None,
    metrics: CollectorRegistry | None = None,
    metrics_open: bool = False,
    join_limits: JoinRateLimits | None = None,
) -> QuartTrio:
    """The app over ``sfu``. With ``tokens`` every signaling route needs a Bearer token
    (see :mod:`trio_sfu.http.guard`), and so does ``/metrics`` (an admin token for all rooms)
    unless ``metrics_open``; the WHIP/WHEP routes are always there. With a
    ``forwarder`` (cluster mode) requests about a connection held by another pod are answered
    by that pod (:mod:`trio_sfu.http.forwarding`). ``metrics`` is the node's registry
    (default: one over ``sfu``)."""
    from trio_sfu.metrics import CONTENT_TYPE, exposition, node_registry

    registry = metrics if metrics is not None else node_registry(
        sfu, str(getattr(sfu, "node_id", "local"))
    )
    app = QuartTrio(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        BODY_TIMEOUT=BODY_TIMEOUT,
        JSON_SORT_KEYS=False,
    )
    guard = Guard(tokens)
    servers = ice_server_list(ice_servers)
    app.register_blueprint(signaling_blueprint(sfu, guard, forwarder, ice_servers=servers))
    if isinstance(getattr(sfu, "drained", None), trio.Event) and hasattr(sfu, "bus"):
        from trio_sfu.http.events import events_blueprint

        app.register_blueprint(events_blueprint(sfu, guard))  # type: ignore[arg-type]
    app.register_blueprint(
        whip_blueprint(sfu, guard, ice_servers=servers, sessions=sessions, forwarder=forwarder)
    )

    @app.get("/ice-servers")
    async def get_ice_servers() -> Response:
        """The STUN/TURN servers for ``RTCConfiguration.iceServers``, TURN credentials fresh
        for this caller (a token's identity; any valid token will do when tokens are on, so a
        relay is never handed to someone the API would refuse). Never cached: they expire."""
        claims = guard.authenticate()
        body = servers.as_json(claims.identity if claims is not None else None)
        response = jsonify(body)
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers (Kubernetes restarts it otherwise)."""
        return Response("ok\n", content_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness (issue 4): Redis and NATS reachable when configured, not draining. A
        Kubernetes Service stops sending new clients to a pod that answers 503 here."""
        check = getattr(sfu, "ready", None)
        ready = True if check is None else await check()
        if ready:
            return Response("ready\n", content_type="text/plain")
        return Response("not ready\n", status=503, content_type="text/plain")

    @app.get("/metrics")
    async def get_metrics() -> Response:
        """Prometheus metrics (:mod:`trio_sfu.metrics`); room names and counts are for the
        operator, so with tokens on this needs an admin token for every room."""
        if not metrics_open:
            claims = guard.authenticate()
            if claims is not None and not (claims.admin and claims.room == ANY_ROOM):
                raise forbidden("/metrics needs an admin token for all rooms ('*')")
        return Response(exposition(registry), content_type=CONTENT_TYPE)

    install_access_log(app)
    install_cors(app, cors_origins)
    install_error_handlers(app)
    install_site(app, site_dir)  # after the generic handlers: it refines 404
    if join_limits is not None:
        app.asgi_app = AdmitJoins(  # type: ignore[method-assign]
            app.asgi_app, join_limits, cors_origins=cors_origins
        )
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
            "http": request.http_version,
        }
        if began is not None:
            extra["ms"] = round((trio.current_time() - began) * 1000, 1)
        # Probes and the demo's files at debug: INFO is for what changes the SFU's state.
        quiet = request.path in ("/healthz", "/readyz", "/metrics") or (
            getattr(g, "static", False) and response.status_code < 400
        )
        level = logging.DEBUG if quiet else logging.INFO
        access_log.log(
            level, "%s %s %s", request.method, request.path, response.status_code, extra=extra
        )
        return response
