"""The worker side of `tdsl.dask`: find the compiled module of a task and run one block.

A task names its module by a `LibraryRef` (the digest of the library or source) and receives
the payload (library bytes, or source text) as a graph dependency, or None when the library is
read from the path the driver used. Each process loads a module once, whichever task comes
first; after that a task is one dictionary look-up and the compiled call (no compiler is
imported for a library). This module imports no dask.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tdsl


@dataclass(frozen=True)
class LibraryRef:
    """What a worker needs to find a compiled module: its digest (the process-wide cache key),
    how it travels (`kind` "library" or "source"), and the target and paths it came from."""

    digest: str
    kind: str
    target: str = "cpu"
    path: str = ""
    filename: str = "<string>"


_MODULES: dict[str, tdsl.Module] = {}
_MODULES_LOCK = threading.Lock()


def module_for(ref: LibraryRef, payload: bytes | str | None) -> tdsl.Module:
    """The loaded module of `ref` in this process (loaded once, by the first task)."""
    module = _MODULES.get(ref.digest)
    if module is not None:
        return module
    with _MODULES_LOCK:
        module = _MODULES.get(ref.digest)
        if module is None:
            module = _open_module(ref, payload)
            _MODULES[ref.digest] = module
    return module


def _open_module(ref: LibraryRef, payload: bytes | str | None) -> tdsl.Module:
    if ref.kind == "source":
        return tdsl.loads(str(payload), target=ref.target, filename=ref.filename)
    if payload is None:
        path = Path(ref.path)
        if not path.is_file():
            raise FileNotFoundError(f"tdsl.dask: this worker cannot read the kernel library "
                                    f"{ref.path}; use ship='bytes', or a cache directory that "
                                    "every worker shares")
        if hashlib.sha256(path.read_bytes()).hexdigest() != ref.digest:
            raise RuntimeError(f"tdsl.dask: the kernel library {ref.path} changed since the "
                               "graph was built; rebuild the graph")
        return tdsl.load_library(path)
    return tdsl.load_library(_private_copy(ref.digest, bytes(payload)))


def _private_copy(digest: str, data: bytes) -> Path:
    """A file holding `data`, named by its digest, in a directory private to this user."""
    root = Path(tempfile.gettempdir()) / f"tdsl-dask-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        root = Path(tempfile.mkdtemp(prefix="tdsl-dask-"))
    path = root / f"{digest}.so"
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
        return path
    fd, staged = tempfile.mkstemp(dir=root, prefix=f".{digest}.", suffix=".so")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(staged, path)
    return path


@dataclass(frozen=True)
class BlockRunner:
    """The task function: run one kernel on one set of blocks. `trailing` singleton axes are
    appended to the outputs (the reduction axes of partial results)."""

    ref: LibraryRef
    kernel: str
    trailing: int = 0

    def __call__(self, payload: bytes | str | None, *blocks: Any) -> Any:
        kernel = module_for(self.ref, payload)[self.kernel]
        result = kernel(*blocks)
        outs = result if isinstance(result, tuple) else (result,)
        outs = tuple(np.asarray(o).reshape(np.shape(o) + (1,) * self.trailing) for o in outs)
        return outs if len(outs) > 1 else outs[0]

    def __dask_tokenize__(self) -> tuple:
        return ("tdsl-block", self.ref.digest, self.kernel, self.trailing)


def keep(x: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    """The `chunk` step of the split reduction: each block is already one partial result."""
    return x


_UFUNCS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}


def combine(op: str, acc: np.dtype, x: np.ndarray, axis: Any = None,
            keepdims: bool = True) -> np.ndarray:
    """Combine partial results with `op` in the accumulator dtype (integers wrap, as in the
    kernel; max/min propagate nan)."""
    return _UFUNCS[op].reduce(x.astype(acc, copy=False), axis=axis, dtype=acc,
                              keepdims=keepdims)


def aggregate(op: str, acc: np.dtype, out: np.dtype, x: np.ndarray, axis: Any = None,
              keepdims: bool = False) -> np.ndarray:
    """The last combination, rounded to the output dtype."""
    return combine(op, acc, x, axis, keepdims).astype(out, copy=False)
