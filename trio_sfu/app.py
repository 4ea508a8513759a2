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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trio_sfu.auth import TokenVerifier
from trio_sfu.config import Config
from trio_sfu.http import HttpSfuApi, SfuApi, create_app
from trio_sfu.http.ice_servers import IceServerList
from trio_sfu.rtc.server import RtcServer

if TYPE_CHECKING:
    from trio_sfu.cluster.forward import ClusterForwarder
    from trio_sfu.cluster.nats_bus import NatsBus
    from trio_sfu.cluster.redis_state import RedisStateStore

log = logging.getLogger(__name__)

# Requests still running when the HTTP side stops get this long before they are cancelled.
GRACEFUL_TIMEOUT = 5.0


class SfuService(HttpSfuApi, Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


SfuFactory = Callable[[RtcServer, Config], SfuService]


def embedded_sfu(rtc: RtcServer, config: Config) -> SfuService:
    """The single-node SFU: in-memory room state and the in-process bus (the Sfu defaults)."""
    from trio_sfu.sfu.service import Sfu

    # The consent timeout lives on the RtcServer, which every peer shares.
    sfu: SfuService = Sfu(rtc)
    return sfu


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
    hc.accesslog = None  # the app logs each request itself, with structured fields
    hc.errorlog = logging.getLogger("trio_sfu.http.server")
    hc.graceful_timeout = GRACEFUL_TIMEOUT
    hc.include_server_header = False
    return hc


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
    rtc = RtcServer.bind(
        config.udp_host,
        config.udp_port,
        public_addresses=public,
        consent_timeout=config.consent_timeout,
        tcp_port=config.tcp_bind_port(),
        tcp_public_port=config.tcp_public_port,
    )
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
                )
                sfu: SfuService = cluster_sfu
            else:
                sfu = sfu_factory(rtc, config)
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

                async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                    await hypercorn_serve(
                        app,
                        hypercorn_config(config),
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                    # HTTP has stopped (gracefully): now end the peers and the UDP reader.
                    nursery.cancel_scope.cancel()

                binds = await nursery.start(http)
                running = Running(
                    http_port=_bound_port(binds[0]),
                    udp_port=rtc.endpoint.local_address[1],
                    tcp_port=rtc.tcp.local_address[1] if rtc.tcp is not None else None,
                    demo_url=config.demo_url(_bound_port(binds[0])),
                    public_addresses=public,
                    rtc=rtc,
                    sfu=sfu,
                    _stop=stop,
                )
                log.info(
                    "trio-sfu started",
                    extra={
                        "http": binds,
                        "udp_port": running.udp_port,
                        "tcp_port": running.tcp_port,
                        "public_ips": public,
                        "site_dir": str(config.site_root()),
                        "node": backends.node_id if backends is not None else "local",
                        "cluster": backends is not None,
                    },
                )
                print(f"trio-sfu: demo at {running.demo_url}", file=sys.stdout, flush=True)
                # DESIGN.md: everything alive now lives for the whole process; keep full
                # collections from walking it again (they pause 30-90 ms on a large heap).
                gc.freeze()
                task_status.started(running)
                started = True
    except BaseExceptionGroup as group:
        # A start-up failure (an HTTP port in use, a bad certificate) surfaces as itself, not
        # wrapped in the nurseries' groups, so callers and the CLI can report it plainly.
        leaf = _sole_leaf(group)
        if not started and isinstance(leaf, OSError):
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
            await nursery.start(bus.run)
            try:
                yield Backends(node_id, state, bus, ClusterForwarder(bus, state, node_id))
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    # Our heartbeat goes first: the other pods sweep our members at once.
                    await state.close()
                nursery.cancel_scope.cancel()


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
