"""Issue 9, item 2: our Python client never gives up on the first 503 (a draining pod, a pod
gone behind the load balancer): it retries with back-off and honours Retry-After."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trio

from trio_sfu.client.sfu import SignalingError, default_ssl_context, http_signal, retry_delay


def test_retry_delay() -> None:
    assert retry_delay(0, "2", 0.25, 4.0) == 2.0
    assert retry_delay(0, "60", 0.25, 4.0) == 4.0  # capped
    assert retry_delay(3, None, 0.25, 4.0) == 2.0  # 0.25 doubled three times
    assert retry_delay(9, None, 0.25, 4.0) == 4.0
    assert retry_delay(1, "Fri, 04 Dec 2026 23:00:00 GMT", 0.25, 4.0) == 0.5  # a date: ours


async def test_503_502_and_no_answer_are_retried_then_answered() -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.Response(503, text="draining", headers={"Retry-After": "0"}),
        httpx.Response(502, text="no pod available"),
        httpx.ConnectError("refused"),
        httpx.Response(201, text="v=0 answer"),
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    signal = http_signal(
        "http://sfu.test", "sub", "r", "bob-1", retry_base=0.01,
        transport=httpx.MockTransport(handler),
    )
    with trio.fail_after(5):
        assert await signal("offer") == "v=0 answer"
    assert seen == ["/sub/r/bob-1"] * 4


async def test_other_refusals_and_spent_retries_raise() -> None:
    def conflict(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, text="id in use")

    with pytest.raises(SignalingError) as caught:
        await http_signal("http://x", "pub", "r", "a-1", transport=httpx.MockTransport(conflict))(
            "offer"
        )
    assert caught.value.status == 409
    count = 0

    def busy(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(503, text="draining")

    with pytest.raises(SignalingError) as caught:
        await http_signal(
            "http://x", "pub", "r", "a-1", retries=3, retry_base=0.001,
            transport=httpx.MockTransport(busy),
        )("offer")
    assert caught.value.status == 503 and count == 4


async def test_every_signalling_client_shares_one_tls_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx loads the CA bundle into a new SSLContext for each client (55-80 ms of CPU here):
    a load tester's hundreds of joins paid it each, and bench/pod.py timed it as the server's
    join latency. Every ``http_signal`` client gets the one shared context unless told
    otherwise."""
    contexts: list[object] = []
    real = httpx.AsyncClient

    def recording(**options: object) -> httpx.AsyncClient:
        contexts.append(options.get("verify"))
        return real(**options)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", recording)
    ok = httpx.MockTransport(lambda request: httpx.Response(201, text="answer"))
    for peer in ("a-1", "b-1"):
        assert await http_signal("https://x", "sub", "r", peer, transport=ok)("offer") == "answer"
    await http_signal("https://x", "sub", "r", "c-1", transport=ok, verify=False)("offer")

    assert contexts[0] is contexts[1] is default_ssl_context()
    assert isinstance(contexts[0], ssl.SSLContext)
    assert contexts[2] is False
