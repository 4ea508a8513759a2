"""rtc layer (see docs/architecture.md)."""
