"""cluster layer (see docs/architecture.md)."""
