"""tdsl: a compiler for a small tensor language.

    mod = tdsl.load("softmax.tdsl")            # check and compile (or take from the cache)
    y = mod.softmax(x)                          # call a kernel on numpy arrays
    tdsl.cuda.to_device(x)                      # GPU arrays for target="cuda" (tdsl.cuda)

The package is light to import: the parser and the compiler load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from tdsl.api import Kernel, Module, load, loads
    from tdsl.source import TdslError

__all__ = ["Kernel", "Module", "TdslError", "__version__", "load", "loads"]

_SUBMODULES = ("cuda",)
_LAZY = {"load": "tdsl.api", "loads": "tdsl.api", "Module": "tdsl.api", "Kernel": "tdsl.api",
         "TdslError": "tdsl.source", "load_library": "tdsl.runtime.aot"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:  # `import tdsl; tdsl.cuda.to_device(x)`
        import importlib

        return importlib.import_module(f"tdsl.{name}")
    raise AttributeError(f"module 'tdsl' has no attribute {name!r}")
