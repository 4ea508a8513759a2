"""Offers for the abuse tests, made by our client library (real SDP, never connected)."""

from __future__ import annotations

import pytest

from tests.rtc_helpers import client_certificate
from trio_sfu.client.sfu import PublisherClient, SubscriberClient


@pytest.fixture
async def sub_offer() -> bytes:
    client = SubscriberClient("offer-1", certificate=client_certificate())
    offer = client.pc.create_offer()
    client.pc.close("unused")
    return offer.encode()


@pytest.fixture
async def pub_offer() -> bytes:
    client = PublisherClient("offer-1", certificate=client_certificate())
    offer = client.pc.create_offer()
    client.pc.close("unused")
    return offer.encode()
