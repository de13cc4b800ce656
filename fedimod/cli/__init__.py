"""The command layer: `fedimod <command>`, one module per command group."""

from fedimod.cli.main import main

__all__ = ["main"]
