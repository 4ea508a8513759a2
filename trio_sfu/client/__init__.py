"""A Python WebRTC client on trio-sfu's own stack (tests, the load tester, bots)."""

from trio_sfu.client.peer import ClientPeerConnection

__all__ = ["ClientPeerConnection"]
