"""Module attributes imported on first use, so that a package face costs
nothing for the names a program never asks for: ``import fastlimit`` loads
no web stack, CLI or redis-py, and a batch job that makes one Limiter loads
only the limiter layer and the table."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(module: str, names: Mapping[str, str],
                    namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[name]`` when ``name``
    is first asked for and keeps the value in ``namespace``.  A value that
    names ``name`` itself as a submodule (``"pkg.name"`` for ``name``) gives
    the submodule."""

    def __getattr__(name: str) -> Any:
        if name in names:
            where = names[name]
            found = importlib.import_module(where)
            value = found if where == f"{module}.{name}" else getattr(found, name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
