"""One trio-sfu process: the UDP endpoint, the SFU and the HTTP server under one root nursery.

Lifetimes follow DESIGN.md: the UDP reader, ``Sfu.run`` (under which every peer lives) and
Hypercorn are children of one nursery. SIGINT/SIGTERM first stop the HTTP side gracefully
(in-flight requests finish, no new ones start), then the nursery is cancelled, which tears every
peer down; a second signal cancels at once. Cancelling :func:`serve` from outside does the
same without the grace period.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trio_sfu.auth import TokenVerifier
from trio_sfu.config import Config
from trio_sfu.http import SfuApi, create_app
from trio_sfu.rtc.server import RtcServer

log = logging.getLogger(__name__)

# Requests still running when the HTTP side stops get this long before they are cancelled.
GRACEFUL_TIMEOUT = 5.0


class SfuService(SfuApi, Protocol):
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
    )
    started = False
    try:
        sfu = sfu_factory(rtc, config)
        app = create_app(
            sfu,
            cors_origins=config.cors_origins,
            site_dir=config.site_root(),
            tokens=token_verifier(config),
            ice_servers=config.ice_servers,
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            if handle_signals and threading.current_thread() is threading.main_thread():
                await nursery.start(_watch_signals, stop, nursery.cancel_scope)
            nursery.start_soon(rtc.serve)
            await nursery.start(sfu.run)

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
                    "public_ips": public,
                    "site_dir": str(config.site_root()),
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
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                log.info("shutting down", extra={"signal": name})
                stop.set()
            else:
                log.warning("second signal: stopping now", extra={"signal": name})
                root.cancel()
