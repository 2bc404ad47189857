"""The thread runtime of compiled CPU kernels: LLVM's OpenMP runtime (libomp).

Kernels compiled with threads call `__kmpc_fork_call_if` (MLIR's OpenMP lowering); libomp
keeps one persistent pool of worker threads per process, so no thread is created per call.
libomp comes from the `cmeel-libomp` wheel (LLVM's libomp, Apache-2.0); `TDSL_LIBOMP` may name
another copy. The system's libgomp lacks the `__kmpc_*` entry points. Without libomp, kernels
are compiled with sequential loops.

- Loading: `load()` opens libomp with RTLD_GLOBAL (once per process) before any kernel is
  loaded, so the JIT and every cached or AOT library (linked against it with an rpath) share
  the one runtime and its pool. Workers sleep 1 ms after a parallel region
  (`KMP_BLOCKTIME=1`, libomp's default is 200 ms of spinning): idle tdsl threads do not take
  cores from numpy's BLAS threads or from other work. A user's `KMP_BLOCKTIME` wins.
- Thread count: `TDSL_NUM_THREADS` (default: the cores this process may use), capped at that
  core count; `set_num_threads(n)` changes it at run time.
- No oversubscription: a call made while another threaded tdsl call is running (from another
  Python thread, e.g. a dask worker pool) runs on one thread. The count is set per calling
  thread with `omp_set_num_threads` (an OpenMP per-thread setting), before every call.
- Small work stays on the calling thread: each parallel region has an `if` clause comparing
  the loop nest's iteration count with `tdsl.parallel_loops.PARALLEL_WORK`.
- The GIL is released during every call (ctypes `CFUNCTYPE`, or the native entry).
- Native calls (`tdsl.runtime.native`) keep the same rules in machine code, through three
  int64 counters shared with this module (`native_counters`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from pathlib import Path

from tdsl.runtime.hostinfo import usable_cores

BLOCKTIME_MS = 1
_STATE: dict[str, object] = {}
_LOCK = threading.Lock()
_ACTIVE: list[int] = []  # one entry per threaded call in flight (list ops are atomic)
# Shared with native calls (`tdsl.runtime.native`), which read and update them in machine
# code: threaded native calls in flight (atomic adds), the thread count, and len(_ACTIVE).
_NATIVE_ACTIVE = ctypes.c_int64(0)
_NATIVE_THREADS = ctypes.c_int64(0)
_PYTHON_ACTIVE = ctypes.c_int64(0)


@functools.lru_cache(maxsize=1)
def libomp_path() -> str | None:
    """The path of LLVM's libomp (`TDSL_LIBOMP`, else the `cmeel-libomp` wheel's), or None."""
    configured = os.environ.get("TDSL_LIBOMP")
    if configured:
        return configured if os.path.exists(configured) else None
    for entry in sys.path:  # where the wheel puts it: <site-packages>/cmeel.prefix/lib
        for name in ("libomp.so", "libomp.dylib"):
            path = Path(entry or ".") / "cmeel.prefix" / "lib" / name
            if path.is_file():
                return str(path.resolve())
    from importlib import metadata as importlib_metadata  # slow: only when not found above

    try:
        dist = importlib_metadata.distribution("cmeel-libomp")
    except importlib_metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "libomp.so" or file.name == "libomp.dylib":
            path = Path(str(dist.locate_file(file)))
            if path.exists():
                return str(path.resolve())
    return None


def available() -> bool:
    """True when libomp is installed (kernels are then compiled with threads)."""
    return libomp_path() is not None


def load() -> ctypes.CDLL | None:
    """Load libomp into the process (RTLD_GLOBAL), once; None when it is not installed."""
    if "lib" in _STATE:
        return _STATE["lib"]  # type: ignore[return-value]
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        path = libomp_path()
        lib = None
        if path is not None:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            lib.omp_get_max_threads.restype = ctypes.c_int
            if "KMP_BLOCKTIME" not in os.environ:
                lib.kmp_set_defaults.argtypes = [ctypes.c_char_p]
                lib.kmp_set_defaults(f"KMP_BLOCKTIME={BLOCKTIME_MS}".encode())
        _STATE["lib"] = lib
        return lib


def cores() -> int:
    """The number of cores this process may run on."""
    return usable_cores()


def _configured() -> int:
    raw = os.environ.get("TDSL_NUM_THREADS", "").strip()
    if not raw:
        return cores()
    try:
        wanted = int(raw)
    except ValueError:
        raise ValueError(f"TDSL_NUM_THREADS must be a positive integer, not {raw!r}") from None
    if wanted < 1:
        raise ValueError(f"TDSL_NUM_THREADS must be a positive integer, not {raw!r}")
    return min(wanted, cores())


def num_threads() -> int:
    """The number of threads a kernel call may use."""
    if "n" not in _STATE:
        _STATE["n"] = _configured()
        _NATIVE_THREADS.value = _STATE["n"]  # type: ignore[assignment]
    return _STATE["n"]  # type: ignore[return-value]


def native_counters() -> tuple[int, int, int]:
    """Addresses of the int64 counters native calls use: threaded native calls in flight,
    the thread count, threaded Python-path calls in flight."""
    num_threads()
    return (ctypes.addressof(_NATIVE_ACTIVE), ctypes.addressof(_NATIVE_THREADS),
            ctypes.addressof(_PYTHON_ACTIVE))


def set_num_threads(n: int | None) -> int:
    """Set the thread count (capped at the cores); None re-reads `TDSL_NUM_THREADS`.
    Returns the count in force."""
    if n is None:
        _STATE.pop("n", None)
        return num_threads()
    if int(n) < 1:
        raise ValueError(f"the thread count must be positive, not {n}")
    _STATE["n"] = min(int(n), cores())
    _NATIVE_THREADS.value = _STATE["n"]  # type: ignore[assignment]
    return _STATE["n"]  # type: ignore[return-value]


def enter_call(lib: ctypes.CDLL) -> None:
    """Before a threaded call: set this thread's OpenMP team size (1 while another threaded
    call is in flight)."""
    _ACTIVE.append(1)
    _PYTHON_ACTIVE.value = len(_ACTIVE)
    busy = len(_ACTIVE) > 1 or _NATIVE_ACTIVE.value > 0
    # Set every time: native calls set the same per-thread OpenMP setting.
    lib.omp_set_num_threads(1 if busy else num_threads())


def exit_call() -> None:
    """After a threaded call."""
    _ACTIVE.pop()
    _PYTHON_ACTIVE.value = len(_ACTIVE)
