"""Package attributes loaded on first use.

A package whose names need TensorFlow, faiss or gRPC hands them out lazily,
so `tfdnc COMMAND --help` and the REST client start without those imports.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable


def lazy_attributes(package: str, names: dict[str, str],
                    modules: Iterable[str] = ()) -> Callable[[str], object]:
    """A module `__getattr__` that imports `names[name]` (a module path) on first access.

    `modules` are subpackages of `package` handed out as attributes
    (`tfdnc.losses` after a bare `import tfdnc`), imported on first access too.

    Example (in a package's `__init__.py`):

    Examples:
        >>> __getattr__ = lazy_attributes(__name__, {"ExportedModel": "tfdnc.serving.local"})
    """
    modules = frozenset(modules)

    def __getattr__(name: str):
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
