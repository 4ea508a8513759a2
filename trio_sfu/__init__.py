"""trio-sfu: a horizontally scalable WebRTC SFU on Trio."""

__version__ = "0.1.0"
