"""The compiled twins of the per-record loops (`_speedups.c`), when the package was built with a
C compiler; None otherwise, and the pure-Python twins run instead (same results, slower)."""

from __future__ import annotations

from types import ModuleType

compiled: ModuleType | None
try:
    from proxy.codec import _speedups as compiled
except ImportError:  # built without a C compiler
    compiled = None


def describe() -> str:
    """For the start-up warning: which implementation of the hot loops runs."""
    return "compiled" if compiled is not None else "pure Python (no C compiler at install)"
