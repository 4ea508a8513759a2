"""HTTP/3 (issue 13, item 3): with --cert/--key/--quic-port, Hypercorn also serves QUIC
(aioquic), every HTTP/1.1 and HTTP/2 response advertises it in Alt-Svc, and a publisher and a
subscriber signal entirely over HTTP/3 — with aioquic's client, and with Chromium
(``--origin-to-force-quic-on``, the test certificate trusted by its SPKI hash) loading the demo
and publishing and subscribing through it. The server's access log shows the requests arrived
as HTTP/3; media flows through the SFU in both cases."""

from __future__ import annotations

import functools
import logging
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from tests.h3_client import h3_request
from tests.rtc_helpers import client_certificate
from tests.test_cli import write_self_signed
from trio_sfu.app import Running, serve
from trio_sfu.client.sfu import PublisherClient, SubscriberClient
from trio_sfu.config import Config, ConfigError


def h3_signal(port: int, cafile: Path, role: str, room: str, peer_id: str):  # type: ignore[no-untyped-def]
    async def signal(offer: str) -> str:
        response = await trio.to_thread.run_sync(functools.partial(
            h3_request, port, "POST", f"/{role}/{room}/{peer_id}", cafile=str(cafile),
            body=offer.encode(), headers={"content-type": "application/sdp"}))
        assert response.status == 201, (response.status, response.body)
        return response.body.decode()

    return signal


async def test_publish_and_subscribe_over_http3(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_sfu.http.access")
    cert, key = write_self_signed(tmp_path)
    config = Config(http_host="127.0.0.1", http_port=0, udp_host="127.0.0.1", udp_port=0,
                    cert=cert, key=key, quic_port=0)
    async with trio.open_nursery() as server:
        running: Running = await server.start(
            functools.partial(serve, config, handle_signals=False))
        assert running.quic_port is not None
        # HTTP/1.1 and HTTP/2 answers point browsers at HTTP/3.
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as http:
            r = await http.get(running.demo_url + "healthz")
        assert f'h3=":{running.quic_port}"' in r.headers["alt-svc"]

        options = {"certificate": client_certificate()}
        bob = SubscriberClient("bob-1", **options)
        await nursery.start(bob.connect, h3_signal(running.quic_port, cert, "sub", "r", "bob-1"))
        alice = PublisherClient("alice-1", **options)
        await nursery.start(
            alice.connect, h3_signal(running.quic_port, cert, "pub", "r", "alice-1"))
        await alice.wait_open()
        await bob.wait_open()
        with trio.fail_after(20):
            i = 0
            while bob.packets["alice-1"] < 20:
                alice.send_frame(keyframe=i % 30 == 0)
                i += 1
                await trio.sleep(0.01)
        room = await trio.to_thread.run_sync(functools.partial(
            h3_request, running.quic_port, "GET", "/rooms/r", cafile=str(cert)))
        assert room.status == 200 and b"alice-1" in room.body
        running.shutdown()
    posts = {(r.path, r.http) for r in caplog.records  # type: ignore[attr-defined]
             if getattr(r, "method", None) in ("POST", "GET") and r.path != "/healthz"}  # type: ignore[attr-defined]
    assert posts == {("/sub/r/bob-1", "3"), ("/pub/r/alice-1", "3"), ("/rooms/r", "3")}, posts


def test_quic_needs_tls() -> None:
    with pytest.raises(ConfigError, match="--quic-port needs --cert"):
        Config(quic_port=8443).check()


def _spki_sha256(cert: Path) -> str:
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _free_port_pair() -> int:
    """A port number free for both TCP and UDP on loopback (Chromium's forced QUIC origin
    uses the HTTPS origin's port number for UDP)."""
    import socket

    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for both TCP and UDP")


@pytest.mark.browser
async def test_chromium_publishes_and_subscribes_over_http3(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from typing import Any

    from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS
    from tests.peers.harness import require_chromium
    from tests.test_site import HARNESS_JS, SCENARIO_TIMEOUT, Page, wait_until

    require_chromium()
    caplog.set_level(logging.INFO, logger="trio_sfu.http.access")
    cert, key = write_self_signed(tmp_path)
    port = _free_port_pair()
    config = Config(http_host="127.0.0.1", http_port=port, udp_host="127.0.0.1", udp_port=0,
                    cert=cert, key=key, quic_port=port)
    args = [*CHROMIUM_ARGS, f"--origin-to-force-quic-on=127.0.0.1:{port}",
            f"--ignore-certificate-errors-spki-list={_spki_sha256(cert)}"]
    harness = HARNESS_JS.read_text()

    def scenario() -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
            try:
                p = Page(browser, "h3")
                p.page.goto(f"https://127.0.0.1:{port}/?room=h3")
                p.page.add_script_tag(content=harness, type="module")
                p.page.wait_for_function("() => window.harness !== undefined")
                pub = p.js("o => harness.publish('alice', o)", {"room": "h3", "user": "alice"})
                p.js("o => harness.subscribe('carol', o)", {"room": "h3", "user": "carol"})

                def status() -> Any:
                    return p.js("n => harness.status(n)", "carol")

                wait_until("carol decoding 30 frames over an HTTP/3-signaled session", status,
                           lambda st: pub in st["tiles"]
                           and st["tiles"][pub]["framesDecoded"] >= 30, 60, p)
            finally:
                browser.close()

    async with trio.open_nursery() as server:
        running: Running = await server.start(
            functools.partial(serve, config, handle_signals=False))
        with trio.fail_after(SCENARIO_TIMEOUT):
            await trio.to_thread.run_sync(scenario, abandon_on_cancel=True)
        running.shutdown()
    posts = {(r.path.split("/")[1], r.http) for r in caplog.records  # type: ignore[attr-defined]
             if getattr(r, "method", None) == "POST"}
    assert posts == {("pub", "3"), ("sub", "3")}, posts
