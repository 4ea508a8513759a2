"""The HTTP face of trio-sfu: Quart-Trio on Hypercorn (see DESIGN.md, "http/")."""

from __future__ import annotations

from trio_sfu.http.app import HttpSfuApi, create_app
from trio_sfu.http.signaling import SfuApi

__all__ = ["HttpSfuApi", "SfuApi", "create_app"]
