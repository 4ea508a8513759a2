"""sfu layer (see docs/architecture.md)."""
