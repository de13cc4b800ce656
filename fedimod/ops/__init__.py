"""Operations: health, readiness and Prometheus metrics, so a stalled scanner is visible."""

from fedimod.ops.server import OpsServer

__all__ = ["OpsServer"]
