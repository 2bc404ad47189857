"""Loading compiled shared libraries (AOT libraries and cache entries) with ctypes only: no
parser, no MLIR, no llvmlite. A library carries its metadata in the `tdsl_metadata` symbol."""

from __future__ import annotations

import ctypes
import marshal
import os
import threading

from tdsl.codegen.pycall_table import native_symbol
from tdsl.runtime import threads
from tdsl.runtime.cpu import CpuExecutable
from tdsl.runtime.signature import Signature

METADATA_SYMBOL = "tdsl_metadata"
METADATA_SIZE_SYMBOL = "tdsl_metadata_size"
SUPPORTED_FORMATS = (1, 2)
MARSHAL_MAGIC = b"tdsl-marshal-4\n"
"""What format-2 metadata starts with: marshal's version 4 follows (readable by every Python 3,
and read without importing `json`: 3 ms of a cached load). Format 1 was JSON."""


class LibraryError(ValueError):
    """A file that is not a loadable tdsl library."""


def read_metadata(lib: ctypes.CDLL, path: str) -> dict:
    """The metadata a library carries."""
    try:
        size = ctypes.c_int64.in_dll(lib, METADATA_SIZE_SYMBOL).value
        start = ctypes.addressof(ctypes.c_char.in_dll(lib, METADATA_SYMBOL))
    except ValueError:
        raise LibraryError(f"{path} is not a tdsl library (no {METADATA_SYMBOL} symbol)") from None
    try:
        meta = _decode(ctypes.string_at(start, size))
    except (ValueError, EOFError, TypeError) as exc:
        raise LibraryError(f"{path}: corrupt tdsl metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise LibraryError(f"{path}: corrupt tdsl metadata (not a table)")
    if meta.get("format") not in SUPPORTED_FORMATS:
        raise LibraryError(f"{path}: unsupported tdsl library format {meta.get('format')!r}")
    return meta


def _decode(data: bytes):
    """The metadata object of a library's bytes: marshal after `MARSHAL_MAGIC`, else JSON
    (libraries written before format 2)."""
    if data.startswith(MARSHAL_MAGIC):
        return marshal.loads(data[len(MARSHAL_MAGIC):])
    import json

    return json.loads(data.decode("utf-8"))


_LOADED: dict[str, tuple[int, int, int]] = {}
_LOADED_LOCK = threading.Lock()


def _loadable_path(path: str) -> str:
    """`path`, or a private copy of it when a different file was loaded from the same path
    before in this process (the dynamic loader would return the old library by name)."""
    st = os.stat(path)
    identity = (st.st_dev, st.st_ino, st.st_mtime_ns)
    with _LOADED_LOCK:
        previous = _LOADED.setdefault(path, identity)
    if previous == identity:
        return path
    import shutil
    import tempfile

    fd, copy = tempfile.mkstemp(prefix="tdsl-lib-", suffix=".so")
    with os.fdopen(fd, "wb") as f, open(path, "rb") as src:
        shutil.copyfileobj(src, f)
    return copy


def _calls_openmp(lib: ctypes.CDLL) -> bool:
    """True when the library is linked against libomp (dlsym searches its dependencies)."""
    return hasattr(lib, "__kmpc_fork_call_if") or hasattr(lib, "__kmpc_fork_call")


def open_library(path: str | os.PathLike[str]) -> tuple[dict, dict[str, CpuExecutable]]:
    """Load a library; return its metadata and an executable per kernel name."""
    path = os.fspath(path)
    threads.load()  # before the library: it is linked against this libomp
    try:
        loadable = _loadable_path(os.path.abspath(path))
        lib = ctypes.CDLL(loadable)
    except OSError as exc:
        raise LibraryError(f"cannot load {path}: {exc}") from None
    if loadable != os.path.abspath(path):
        os.unlink(loadable)  # the mapping stays valid
    meta = read_metadata(lib, path)
    threaded = _calls_openmp(lib)
    executables: dict[str, CpuExecutable] = {}
    for entry in meta["kernels"]:
        signature = Signature.from_json(entry["signature"])
        try:
            function = getattr(lib, entry["entry"])
        except AttributeError:
            raise LibraryError(f"{path}: missing entry point {entry['entry']}") from None
        address = ctypes.cast(function, ctypes.c_void_p).value
        fast = getattr(lib, entry.get("fast", ""), None) if entry.get("fast") else None
        native = getattr(lib, native_symbol(signature.name), None)
        executables[signature.name] = CpuExecutable(
            signature, address, keepalive=lib, threaded=threaded,
            fast_address=ctypes.cast(fast, ctypes.c_void_p).value if fast is not None else 0,
            native_address=ctypes.cast(native, ctypes.c_void_p).value if native else 0)
    return meta, executables


def load_library(path: str | os.PathLike[str]):
    """Load a library written by `tdsl compile FILE -o lib.so`, or a CUDA bundle written by
    `tdsl compile FILE --target cuda --emit bundle -o FILE.tdslcuda`, as a module of kernels,
    validated exactly like `tdsl.load`; the compiler need not be installed."""
    from tdsl.api import Kernel, Module
    from tdsl.runtime.cuda_bundle import is_bundle, read_bundle

    if is_bundle(path):
        bundled = read_bundle(path)
        kernels = {name: Kernel(ex.signature, "cuda", _constant(ex)) for name, ex in
                   bundled.items()}
        return Module(kernels, os.fspath(path), "cuda")
    meta, executables = open_library(path)
    kernels = {name: Kernel(ex.signature, "cpu", _constant(ex)) for name, ex in
               executables.items()}
    return Module(kernels, os.fspath(path), meta.get("target", "cpu"))


def _constant(value):
    return lambda: value
