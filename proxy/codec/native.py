"""The compiled twins of the per-record loops, the schema walk, the pairing core, the
producer's request lane and the fetch skim (`_speedups.c`, `_schema_walk.c`, `_pairing.c`,
`_request_roots.c`, `_fetch_skim.c`), when the package was built with a C compiler; None
otherwise, and the pure-Python twins run instead (same results, slower)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

compiled: ModuleType | None
try:
    from proxy.codec import _speedups as compiled
except ImportError:  # built without a C compiler
    compiled = None


def describe() -> str:
    """For the start-up warning: which implementation of the hot loops runs."""
    return "compiled" if compiled is not None else "pure Python (no C compiler at install)"


def twin(name: str, python: F, *, error: type[Exception] | None = None) -> F:
    """The compiled function `name` when the extension is built, else its Python twin. The
    compiled functions raise ValueError on malformed input; with `error`, that becomes `error`,
    as the Python twin raises it."""
    if compiled is None:
        return python
    function = getattr(compiled, name)
    if error is None:
        return function  # type: ignore[no-any-return]

    def translated(*args: Any) -> Any:
        try:
            return function(*args)
        except ValueError as exc:
            raise error(str(exc)) from None

    return translated  # type: ignore[return-value]
