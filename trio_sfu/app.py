"""One trio-sfu process: the UDP endpoint, the SFU and the HTTP server under one root nursery.

Lifetimes follow DESIGN.md: the UDP reader, ``Sfu.run`` (under which every peer lives) and
Hypercorn are children of one nursery. SIGINT/SIGTERM first stop the HTTP side gracefully
(in-flight requests finish, no new ones start), then the nursery is cancelled, which tears every
peer down; a second signal cancels at once. Cancelling :func:`serve` from outside does the
same without the grace period.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trio_sfu.auth import TokenVerifier
from trio_sfu.compiled import compiled_modules
from trio_sfu.config import Config
from trio_sfu.gcpolicy import GcPolicy
from trio_sfu.http import HttpSfuApi, SfuApi, create_app
from trio_sfu.http.hypercorn_fixes import apply_hypercorn_fixes
from trio_sfu.http.ice_servers import IceServerList
from trio_sfu.http.limits import JoinRateLimits, refuse_cleartext_http2
from trio_sfu.metrics import metrics_app, node_registry
from trio_sfu.rtc.server import RtcServer

if TYPE_CHECKING:
    from trio_sfu.cluster.forward import ClusterForwarder
    from trio_sfu.cluster.nats_bus import NatsBus
    from trio_sfu.cluster.redis_state import RedisStateStore
    from trio_sfu.sfu.limits import SfuLimits

log = logging.getLogger(__name__)

# Requests still running when the HTTP side stops get this long before they are cancelled.
GRACEFUL_TIMEOUT = 5.0
#: Connections the kernel queues for accept (Hypercorn's default is 100; capped by somaxconn).
LISTEN_BACKLOG = 2048
#: Concurrent HTTP/2 streams per connection (Hypercorn's default is 100).
H2_MAX_STREAMS = 32


class StartupError(Exception):
    """The process cannot start; the message is one line naming what (an address and port,
    a backend's URL). ``status`` is the exit status the CLI uses."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class SfuService(HttpSfuApi, Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


SfuFactory = Callable[[RtcServer, Config], SfuService]


def embedded_sfu(rtc: RtcServer, config: Config) -> SfuService:
    """The single-node SFU: in-memory room state and the in-process bus (the Sfu defaults)."""
    from trio_sfu.sfu.service import Sfu

    # The consent timeout lives on the RtcServer, which every peer shares.
    sfu: SfuService = Sfu(rtc, limits=sfu_limits(config))
    return sfu


def sfu_limits(config: Config) -> SfuLimits:
    from trio_sfu.sfu.limits import SfuLimits

    return SfuLimits(
        max_members_per_room=config.max_members_per_room,
        max_rooms=config.max_rooms,
        max_half_open_per_source=config.max_half_open_per_ip,
        max_half_open=config.max_half_open,
        chat_rate=config.chat_rate,
        chat_burst=config.chat_burst,
        max_send_buffer=config.max_send_buffer,
    )


@dataclass
class Running:
    """What a started server reports through ``task_status`` (ports are the bound ones)."""

    http_port: int
    udp_port: int
    tcp_port: int | None  # None: ICE-TCP is off
    demo_url: str
    public_addresses: list[str]
    rtc: RtcServer
    sfu: SfuApi
    _stop: trio.Event = field(repr=False)
    #: the --metrics-port listener's bound port, if there is one
    metrics_port: int | None = None
    #: the HTTP/3 (QUIC) port, if --quic-port
    quic_port: int | None = None

    def shutdown(self) -> None:
        """Begin the graceful stop a SIGTERM would begin; ``serve`` returns when it is done."""
        self._stop.set()


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    hc.bind = [f"{host}:{config.http_port}"]
    if config.cert is not None and config.key is not None:
        hc.certfile = str(config.cert)
        hc.keyfile = str(config.key)
        if config.quic_port is not None:
            # HTTP/3 over QUIC (Hypercorn on aioquic); every HTTP/1.1 and HTTP/2 response
            # then carries Alt-Svc: h3=":<bound port>" so browsers can switch (RFC 9114 §3.1.1).
            hc.quic_bind = [f"{host}:{config.quic_port}"]
    hc.accesslog = None  # the app logs each request itself, with structured fields
    hc.errorlog = logging.getLogger("trio_sfu.http.server")
    hc.graceful_timeout = GRACEFUL_TIMEOUT
    hc.include_server_header = False
    # HTTP/2 reset floods (CVE-2023-44487 "rapid reset"): few concurrent streams per
    # connection, and no cleartext HTTP/2 unless asked for (docs/security.md).
    hc.h2_max_concurrent_streams = H2_MAX_STREAMS
    # Hypercorn's keep_alive_max_requests (1000) ends a connection with GOAWAY after that many
    # streams, reset or not; lower values make it close HTTP/1.1 keep-alive connections under
    # clients still sending on them, so it stays at its default.
    # A burst of joins must queue in the kernel, not be reset (issue 14: 1,000 at once).
    hc.backlog = LISTEN_BACKLOG
    hc.trio_sfu_h2c = config.http2_cleartext  # type: ignore[attr-defined]
    refuse_cleartext_http2()
    apply_hypercorn_fixes()  # late HTTP/2 DATA, a send racing send_eof (docs/security.md)
    return hc


def metrics_hypercorn_config(config: Config) -> HypercornConfig:
    """The --metrics-port listener: plain HTTP on --http-host, /metrics only, no token."""
    assert config.metrics_port is not None
    hc = hypercorn_config(config)
    host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    hc.bind = [f"{host}:{config.metrics_port}"]
    hc.certfile = hc.keyfile = None
    hc.quic_bind = []
    return hc


def _quic_port(hc: HypercornConfig) -> int | None:
    """The UDP port Hypercorn bound for QUIC (the one its Alt-Svc header names)."""
    addresses = getattr(hc, "_quic_addresses", None) or []
    return int(addresses[0][1]) if addresses else None


def _bound_port(url: str) -> int:
    # Hypercorn reports binds as "http://127.0.0.1:8080" or "https://[::]:8443".
    return int(url.rsplit(":", 1)[1])


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    sfu_factory: SfuFactory = embedded_sfu,
    handle_signals: bool = True,
) -> None:
    """Run a node until SIGINT/SIGTERM, :meth:`Running.shutdown` or cancellation."""
    config.check()
    public = config.advertised_addresses()
    try:
        rtc = RtcServer.bind(
            config.udp_host,
            config.udp_port,
            public_addresses=public,
            consent_timeout=config.consent_timeout,
            connect_timeout=config.connect_timeout,
            tcp_port=config.tcp_bind_port(),
            tcp_public_port=config.tcp_public_port,
        )
    except OSError as error:
        reason = error.strerror or str(error)
        if reason.startswith("ICE-TCP port"):  # the TCP bind names its own port
            raise StartupError(f"cannot bind the {reason}") from None
        raise StartupError(
            f"cannot bind the UDP media port {_address(config.udp_host, config.udp_port)}: "
            f"{reason}"
        ) from None
    started = False
    try:
        async with cluster_backends(config) as backends:
            if backends is not None:
                from trio_sfu.sfu.service import Sfu

                cluster_sfu = Sfu(
                    rtc,
                    state=backends.state,
                    bus=backends.bus,
                    relay=backends.bus.relay,
                    node_id=backends.node_id,
                    limits=sfu_limits(config),
                )
                sfu: SfuService = cluster_sfu
            else:
                sfu = sfu_factory(rtc, config)
            registry = node_registry(
                sfu,
                backends.node_id if backends is not None else "local",
                room_limit=config.metrics_rooms,
            )
            app = create_app(
                sfu,
                cors_origins=config.cors_origins,
                site_dir=config.site_root(),
                tokens=token_verifier(config),
                ice_servers=IceServerList(
                    config.ice_servers,
                    turn_urls=config.turn_urls,
                    turn_secret=config.turn_secret,
                    ttl=config.turn_ttl,
                ),
                forwarder=backends.forwarder if backends is not None else None,
                metrics=registry,
                metrics_open=config.metrics_open,
                join_limits=JoinRateLimits(
                    per_source=config.max_joins_per_ip, total=config.max_joins
                ),
            )
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                if handle_signals and threading.current_thread() is threading.main_thread():
                    drain = functools.partial(
                        _drain, sfu, config.drain_timeout, stop, notice=config.drain_notice
                    )
                    await nursery.start(_watch_signals, stop, nursery.cancel_scope, drain)
                nursery.start_soon(rtc.serve)
                await nursery.start(sfu.run)
                if backends is not None:
                    await nursery.start(
                        functools.partial(
                            backends.state.run,
                            cluster_sfu.local_truth,
                            cluster_sfu.on_dead_node,
                            on_revived=cluster_sfu.on_revived,
                        )
                    )
                    # Requests other pods forward here (a session this pod holds).
                    await nursery.start(backends.forwarder.serve, app)

                http_config = hypercorn_config(config)

                async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                    await hypercorn_serve(
                        app,
                        http_config,
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                    # HTTP has stopped (gracefully): now end the peers and the UDP reader.
                    nursery.cancel_scope.cancel()

                where = f"the HTTP port {_address(config.http_host, config.http_port)}"
                if config.quic_port is not None:
                    where += f" or the QUIC port {_address(config.http_host, config.quic_port)}/udp"
                with _naming_port(where):
                    binds = await nursery.start(http)
                metrics_port = None
                if config.metrics_port is not None:
                    where = f"the metrics port {_address(config.http_host, config.metrics_port)}"
                    with _naming_port(where):
                        metrics_binds = await nursery.start(
                            functools.partial(
                                hypercorn_serve,
                                metrics_app(registry),
                                metrics_hypercorn_config(config),
                                shutdown_trigger=stop.wait,
                            )
                        )
                    metrics_port = _bound_port(metrics_binds[0])
                running = Running(
                    http_port=_bound_port(binds[0]),
                    udp_port=rtc.endpoint.local_address[1],
                    tcp_port=rtc.tcp.local_address[1] if rtc.tcp is not None else None,
                    demo_url=config.demo_url(_bound_port(binds[0])),
                    public_addresses=public,
                    rtc=rtc,
                    sfu=sfu,
                    _stop=stop,
                    metrics_port=metrics_port,
                    quic_port=_quic_port(http_config),
                )
                log.info(
                    "trio-sfu started",
                    extra={
                        "http": binds,
                        "udp_port": running.udp_port,
                        "tcp_port": running.tcp_port,
                        "public_ips": public,
                        "site_dir": str(config.site_root()),
                        "metrics": metrics_port,
                        "quic": running.quic_port,
                        "node": backends.node_id if backends is not None else "local",
                        "cluster": backends is not None,
                        "demo": running.demo_url,
                        # 0: pure Python; scripts/compile builds them with mypyc
                        "compiled_modules": len(compiled_modules()),
                    },
                )
                if config.log_format == "text":  # JSON logs stay JSON only: the line has it
                    print(f"trio-sfu: demo at {running.demo_url}", file=sys.stdout, flush=True)
                # DESIGN.md: everything alive now lives for the whole process; keep full
                # collections from walking it again (they pause 30-90 ms on a large heap).
                gc.freeze()
                # And what survives each later full collection (the connected peers' heap):
                # trio_sfu/gcpolicy.py, compacted when peers have left (told by the server,
                # so the policy's task sleeps while nobody leaves).
                gc_policy = GcPolicy()
                rtc.on_peer_left = gc_policy.note_left
                nursery.start_soon(gc_policy.run)
                task_status.started(running)
                started = True
    except BaseExceptionGroup as group:
        # A start-up failure (an HTTP port in use, a bad certificate) surfaces as itself, not
        # wrapped in the nurseries' groups, so callers and the CLI can report it plainly.
        leaf = _sole_leaf(group)
        if not started and isinstance(leaf, OSError | StartupError):
            raise leaf from None
        raise
    finally:
        rtc.close()
    log.info("trio-sfu stopped")


@dataclass
class Backends:
    node_id: str
    state: RedisStateStore
    bus: NatsBus
    forwarder: ClusterForwarder


@asynccontextmanager
async def cluster_backends(config: Config) -> AsyncIterator[Backends | None]:
    """Redis state and the NATS bus when both URLs are set (issue 4), else None.

    The asyncio side is imported only here: trio-asyncio changes asyncio's loop policy for the
    whole process, which single-node servers (and tests driving browsers) do not need.
    """
    if not config.cluster:
        yield None
        return
    from trio_sfu.cluster.aio import open_asyncio
    from trio_sfu.cluster.forward import ClusterForwarder
    from trio_sfu.cluster.nats_bus import NatsBus
    from trio_sfu.cluster.redis_state import RedisStateStore

    assert config.redis_url is not None and config.nats_url is not None
    node_id = config.effective_node_id()
    async with open_asyncio():
        # One prefix for every Redis key and NATS subject (issue 9): clusters that share the
        # servers but not the prefix never see each other's rooms.
        state = RedisStateStore(config.redis_url, node_id, prefix=config.cluster_prefix)
        bus = NatsBus(config.nats_url, node_id, prefix=config.cluster_prefix)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)  # waits a moment for NATS, then starts anyway
            await _check_backends(config, state, bus)
            try:
                yield Backends(node_id, state, bus, ClusterForwarder(bus, state, node_id))
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    # Our heartbeat goes first: the other pods sweep our members at once.
                    await state.close()
                nursery.cancel_scope.cancel()


async def _check_backends(config: Config, state: RedisStateStore, bus: NatsBus) -> None:
    """Backends not answering at start: with --require-backends that ends the process (one
    line naming them); by default the pod starts, retries with back-off, and /readyz says
    503 until they answer."""
    assert config.redis_url is not None and config.nats_url is not None
    down = [
        f"{name} at {Config.shown_url(url)}"
        for name, url, backend in (
            ("Redis", config.redis_url, state),
            ("NATS", config.nats_url, bus),
        )
        if not await backend.ready()
    ]
    if not down:
        return
    if config.require_backends:
        raise StartupError(f"cannot reach {' and '.join(down)} (--require-backends)", status=2)
    log.warning(
        "cluster backend unreachable at start-up: retrying; /readyz answers 503 until it is back",
        extra={"unreachable": down},
    )


@contextmanager
def _naming_port(where: str) -> Iterator[None]:
    """A bind failure (port in use, no such address) as one line naming the address."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = _sole_leaf(group)
        if isinstance(leaf, OSError):
            raise StartupError(f"cannot listen on {where}: {leaf.strerror or leaf}") from None
        raise
    except OSError as error:
        raise StartupError(f"cannot listen on {where}: {error.strerror or error}") from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _drain(sfu: SfuService, timeout: float, stop: trio.Event, *, notice: float = 0.0) -> None:
    """SIGTERM (issues 4 and 9): ``/readyz`` turns 503 at once and new sessions go elsewhere;
    after ``notice`` seconds (load balancers have seen the 503 by then) connected clients get
    RECONNECT; stop once no connection is left or ``timeout`` after the signal."""
    drain = getattr(sfu, "drain", None)
    if drain is not None:
        with trio.move_on_after(timeout):
            drain(reconnect=False)
            await trio.sleep(notice)
            getattr(sfu, "send_reconnect", lambda: None)()
            while getattr(sfu, "members", 0):
                await trio.sleep(0.2)
    stop.set()


def token_verifier(config: Config) -> TokenVerifier | None:
    """The Bearer-token check, or None (and a warning) for an open server (issue 5)."""
    if config.api_key is None or config.api_secret is None:
        log.warning(
            "authentication is off: anyone who can reach the HTTP port may publish, subscribe "
            "and list rooms (set --api-key and --api-secret to require tokens)"
        )
        return None
    log.info("tokens required", extra={"api_key": config.api_key})
    return TokenVerifier(config.api_key, config.api_secret)


def _sole_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _watch_signals(
    stop: trio.Event,
    root: trio.CancelScope,
    drain: Callable[[], Awaitable[None]] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT stops at once (gracefully); SIGTERM drains first when a drain is given (the
    Kubernetes way to take a pod out); a second signal of either kind stops now."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            signalled = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if signalled:
                    log.warning("second signal: stopping now", extra={"signal": name})
                    root.cancel()
                    return
                signalled = True
                if signum == signal.SIGTERM and drain is not None:
                    log.info("draining", extra={"signal": name})
                    nursery.start_soon(drain)
                else:
                    log.info("shutting down", extra={"signal": name})
                    stop.set()
