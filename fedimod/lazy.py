"""Package exports that load on first use (PEP 562).

A stage's package re-exports its engine (the index, the hash pool) for convenience, but config
and the CLI import the stage's settings module, which imports the package first: eager exports
would load numba, Pillow and the decoders for `fedimod status`. `exports` gives the package a
module `__getattr__` that imports each name's module when the name is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name in `homes` comes from its module, on first use."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
