"""The service: wires the stages together and runs them (see docs/architecture.md)."""
