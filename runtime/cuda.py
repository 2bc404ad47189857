"""The CUDA target: kernels compiled to PTX, their host code JIT-compiled and run on a GPU.

`compile_kernel(kernel)` runs the GPU pipeline (`tdsl.gpu_pipeline`) to PTX and to the host
function's LLVM IR; it needs no GPU. The first call loads the CUDA driver
(`tdsl.runtime.cuda_driver`), JIT-compiles the host code with llvmlite (MCJIT) and runs its
constructor, which loads the PTX with the driver's JIT (once per process per PTX). The host
code calls the MLIR CUDA runtime's C interface (`mgpuLaunchKernel`, `mgpuMemAlloc`, ...);
this module provides those functions as ctypes callbacks over the driver, registered with
`llvmlite.binding.add_symbol`. A failure inside a callback is recorded and raised as
`CudaError` once the host code returns.

Calls take numpy arrays (copied to the device and back), `DeviceArray`s made with
`to_device`, or any object with `__cuda_array_interface__` (CuPy, PyTorch, Numba) or with
`__dlpack__` on a CUDA device (`tdsl.runtime.dlpack`), used in place. Importing this module
never fails without CUDA; a call without a usable driver raises `CudaUnavailableError` naming
what is missing.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tdsl.runtime.cuda_driver import CudaError, CudaUnavailableError, driver
from tdsl.runtime.device_array import DeviceArray, device_view, to_device
from tdsl.runtime.signature import BoundCall, Signature

if TYPE_CHECKING:
    from tdsl.checked import Kernel

__all__ = ["CudaError", "CudaExecutable", "CudaUnavailableError", "DeviceArray",
           "compile_kernel", "default_arch", "to_device"]

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_P, _I64, _SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t


class _Runtime:
    """The process-wide state behind the mgpu* callbacks: the driver and per-thread errors."""

    def __init__(self) -> None:
        self.driver: Any = None
        self.local = threading.local()

    def fail(self, exc: BaseException) -> None:
        if getattr(self.local, "error", None) is None:
            self.local.error = exc

    def failed(self) -> bool:
        return getattr(self.local, "error", None) is not None

    def take_error(self) -> BaseException | None:
        error, self.local.error = getattr(self.local, "error", None), None
        return error


RUNTIME = _Runtime()


def _guard(default=None):
    """Wrap a callback body: record exceptions, return `default` after a failure."""
    def wrap(fn):
        def call(*args):
            if RUNTIME.failed():
                return default
            try:
                return fn(*args)
            except BaseException as exc:  # noqa: BLE001 - nothing may cross into C
                RUNTIME.fail(exc)
                return default
        call.__name__ = fn.__name__
        return call
    return wrap


@_guard(0)
def _module_load(data, size):
    return RUNTIME.driver.load_module(ctypes.string_at(data, size))


@_guard(0)
def _module_load_jit(data, opt_level):
    return RUNTIME.driver.load_module(ctypes.string_at(data))


@_guard(0)
def _module_function(module, name):
    return RUNTIME.driver.function(module or 0, name)


@_guard()
def _launch(function, gx, gy, gz, bx, by, bz, shared, stream, params, extra, count):
    RUNTIME.driver.launch(function or 0, (gx, gy, gz), (bx, by, bz), shared, stream or 0,
                          params or 0)


@_guard(0)
def _stream_create():
    return RUNTIME.driver.stream()


@_guard(0)
def _event_create():
    return 1  # events order nothing on one stream (see _NO_OPS): an opaque non-null handle


@_guard()
def _event_record(event, stream):
    return None


@_guard(0)
def _mem_alloc(size, stream, host_shared):
    if host_shared:
        raise CudaError("host-shared (managed) allocations are not supported")
    return RUNTIME.driver.alloc(size, stream or 0)


@_guard()
def _mem_free(ptr, stream):
    RUNTIME.driver.free(ptr or 0, stream or 0)


@_guard()
def _memcpy(dst, src, size, stream):
    RUNTIME.driver.copy(dst or 0, src or 0, size, stream or 0)


@_guard()
def _memset32(dst, value, count, stream):
    RUNTIME.driver.memset32(dst or 0, value, count, stream or 0)


@_guard()
def _memset16(dst, value, count, stream):
    RUNTIME.driver.memset16(dst or 0, value, count, stream or 0)


_CALLBACKS = {
    "mgpuModuleLoad": (ctypes.CFUNCTYPE(_P, _P, _SZ), _module_load),
    "mgpuModuleLoadJIT": (ctypes.CFUNCTYPE(_P, _P, ctypes.c_int), _module_load_jit),
    "mgpuModuleGetFunction": (ctypes.CFUNCTYPE(_P, _P, ctypes.c_char_p), _module_function),
    "mgpuLaunchKernel": (ctypes.CFUNCTYPE(None, _P, _I64, _I64, _I64, _I64, _I64, _I64,
                                          ctypes.c_int32, _P, _P, _P, _SZ), _launch),
    "mgpuStreamCreate": (ctypes.CFUNCTYPE(_P), _stream_create),
    "mgpuEventCreate": (ctypes.CFUNCTYPE(_P), _event_create),
    "mgpuEventRecord": (ctypes.CFUNCTYPE(None, _P, _P), _event_record),
    "mgpuMemAlloc": (ctypes.CFUNCTYPE(_P, ctypes.c_uint64, _P, ctypes.c_bool), _mem_alloc),
    "mgpuMemFree": (ctypes.CFUNCTYPE(None, _P, _P), _mem_free),
    "mgpuMemcpy": (ctypes.CFUNCTYPE(None, _P, _P, _SZ, _P), _memcpy),
    "mgpuMemset32": (ctypes.CFUNCTYPE(None, _P, ctypes.c_uint32, _SZ, _P), _memset32),
    "mgpuMemset16": (ctypes.CFUNCTYPE(None, _P, ctypes.c_uint16, _SZ, _P), _memset16),
}
MGPU_SYMBOLS = frozenset(_CALLBACKS)
_REGISTERED: dict[str, Any] = {}
_REGISTER_LOCK = threading.Lock()


# mgpu* functions that do nothing here, defined in the host code itself so that LLVM removes
# their calls (a callback would be a ctypes round trip into Python). Every stream of the host
# code is the calling thread's one stream (`_stream_create`), which orders its launches,
# allocations and frees, and the runtime synchronizes it once after the host code returns
# (`CudaExecutable.launch`'s copies back, `bind_device_call`, `_fast_call`): the host code's
# synchronization after each launch had kept the GPU idle between launches. Modules stay
# loaded for the process (cached by content), the thread's stream is reused.
_NO_OPS = ("mgpuStreamSynchronize", "mgpuStreamDestroy", "mgpuEventSynchronize",
           "mgpuEventDestroy", "mgpuStreamWaitEvent", "mgpuModuleUnload")
_DECLARE = re.compile(r"^declare void @(" + "|".join(_NO_OPS) + r")\(([^)]*)\)[^\n]*$",
                      re.MULTILINE)


def define_no_ops(host_llvm: str) -> str:
    """The host LLVM IR with the declarations of the `_NO_OPS` functions made empty bodies."""
    def body(match: re.Match) -> str:
        params = [p.strip() for p in match.group(2).split(",") if p.strip()]
        named = ", ".join(f"{p} %{i}" for i, p in enumerate(params))
        return f"define void @{match.group(1)}({named}) {{\n  ret void\n}}"

    return _DECLARE.sub(body, host_llvm)


def register_runtime_symbols() -> None:
    """Make the mgpu* functions resolvable by JIT-compiled code (once per process)."""
    import llvmlite.binding as llvm

    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        for name, (prototype, fn) in _CALLBACKS.items():
            callback = prototype(fn)
            _REGISTERED[name] = callback  # keep it alive
            llvm.add_symbol(name, ctypes.cast(callback, ctypes.c_void_p).value)


def default_arch() -> str:
    """The arch to compile for: `$TDSL_CUDA_ARCH`, else the device's when a GPU is usable
    (capped at what the compiler knows), else `sm_80`."""
    from tdsl.gpu_pipeline import DEFAULT_ARCH

    if os.environ.get("TDSL_CUDA_ARCH"):
        return os.environ["TDSL_CUDA_ARCH"]
    try:
        info = driver().info
    except (CudaUnavailableError, CudaError):
        return DEFAULT_ARCH
    major, minor = info.capability
    number = min(major * 10 + minor, 120)
    return f"sm_{number}"


@dataclass
class CudaExecutable:
    """A kernel compiled for CUDA: PTX and host LLVM IR; loaded on the first call."""

    signature: Signature
    ptx: str
    host_llvm: str
    arch: str
    entries: list[str] = field(default_factory=list)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    gpu_ir: str = field(default="", repr=False)  # the `gpu` stage (emulators load it)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._fn: Any = None
        self._keepalive: Any = None
        self._plan: tuple | None = None  # the last device call's layout (`_fast_call`)

    def load(self, drv: Any = None) -> None:
        """JIT the host code (its constructor loads the PTX); `drv` replaces the driver."""
        with self._lock:
            if self._fn is not None:
                return
            from tdsl.codegen import llvm as cg
            from tdsl.pipelines import entry_symbol

            RUNTIME.driver = drv if drv is not None else driver()
            if hasattr(RUNTIME.driver, "add_program"):  # an emulator standing in for a GPU
                RUNTIME.driver.add_program(self.gpu_ir)
            register_runtime_symbols()
            start = time.perf_counter()
            mod = cg.optimize(cg.parse(define_no_ops(self.host_llvm)))
            cg.check_externals(mod, provided=MGPU_SYMBOLS)
            RUNTIME.take_error()
            code = cg.jit(mod)  # runs the constructor: mgpuModuleLoadJIT
            error = RUNTIME.take_error()
            if error is not None:
                raise CudaError(f"loading the kernels of '{self.signature.name}' failed: "
                                f"{error}") from error
            self._keepalive = code
            self._fn = _ENTRY(code.address(entry_symbol(self.signature.name)))
            self.compile_seconds["host_jit"] = time.perf_counter() - start

    def run(self, call: BoundCall) -> None:
        """Compute the outputs of a validated call (numpy arrays) into `call.outputs`."""
        drv = driver()
        self.load(drv)
        self.launch(drv, call.inputs, call.outputs)

    def launch(self, drv: Any, inputs: list, outputs: list) -> None:
        """Run on arguments that are numpy arrays (copied in and out) or device views."""
        stream = drv.stream()
        owned: list[int] = []
        keep: list[np.ndarray] = []
        values: list[int] = []
        copies: list[tuple[np.ndarray, int]] = []
        try:
            for array in inputs:
                values += self._argument(drv, stream, array, owned, keep, upload=True)
            for array in outputs:
                slots = self._argument(drv, stream, array, owned, keep, upload=False)
                if isinstance(array, np.ndarray):
                    copies.append((array, slots[1]))
                values += slots
            slots_array = (ctypes.c_int64 * len(values))(*values)
            RUNTIME.driver = drv
            RUNTIME.take_error()
            self._fn(ctypes.addressof(slots_array))
            error = RUNTIME.take_error()
            if error is not None:
                raise CudaError(f"running '{self.signature.name}' on the GPU failed: "
                                f"{error}") from error
            for given, ptr in copies:
                host = np.empty(given.shape, dtype=given.dtype)
                drv.copy(host.ctypes.data, ptr, host.nbytes, stream)
                keep.append(host)
                drv.synchronize(stream)
                np.copyto(given, host)
        finally:
            for ptr in owned:
                drv.free(ptr, stream)

    @staticmethod
    def _argument(drv: Any, stream: int, array: Any, owned: list, keep: list,
                  upload: bool) -> list[int]:
        """The memref descriptor slots of one argument (device memory)."""
        if not isinstance(array, np.ndarray):
            view = device_view(array)
            return [view.ptr, view.ptr, 0, *view.shape, *view.strides]
        host = np.array(array, order="C", copy=not array.flags.c_contiguous)  # keeps rank 0
        ptr = drv.alloc(max(host.nbytes, 1), stream)
        owned.append(ptr)
        if upload:
            keep.append(host)
            drv.copy(ptr, host.ctypes.data, host.nbytes, stream)
        strides = [s // host.itemsize if host.itemsize else 0 for s in host.strides]
        return [ptr, ptr, 0, *host.shape, *strides]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call with numpy arrays, `DeviceArray`s, `__cuda_array_interface__` or DLPack
        objects. Outputs the call allocates are `DeviceArray`s when any argument is on the
        device. (`Kernel.__call__` comes here for calls with device arrays.)"""
        from tdsl.runtime.device_array import bind_device_call

        result = self._fast_call(args, kwargs)
        if result is not _NO_PLAN:
            return result
        result = bind_device_call(self, args, kwargs)
        self._plan = _plan_of(self.signature, args, kwargs, result)
        return result

    def _fast_call(self, args: tuple, kwargs: dict) -> Any:
        """A call laid out like the last one that passed `bind_device_call` (the same
        `DeviceArray` shapes and dtypes, numpy scalars of the same dtypes, outputs given by
        the same names), run without validating it again; `_NO_PLAN` for any other call, or
        when a given output overlaps an input."""
        plan = self._plan
        if plan is None or _layout(args, kwargs) != plan[0]:
            return _NO_PLAN
        drv = driver()
        if any(a._driver is not drv for a in (*args, *kwargs.values())
               if isinstance(a, DeviceArray)):
            return _NO_PLAN  # arrays of another driver: the checked path says what is wrong
        spans = [(a.ptr, a.ptr + a.nbytes) for a in args if isinstance(a, DeviceArray)]
        for out in kwargs.values():
            if any(start < out.ptr + out.nbytes and out.ptr < end for start, end in spans):
                return _NO_PLAN
        outputs, results = [], []
        for param, shape, dtype in plan[1]:
            out = kwargs.get(param.name)
            if out is None:
                out = DeviceArray(shape, dtype, drv)
            outputs.append(out)
            results.append(out)
        inputs = [a if isinstance(a, DeviceArray) else np.asarray(a) for a in args]
        self.load(drv)
        self.launch(drv, inputs, outputs)
        drv.synchronize(drv.stream())
        return results[0] if len(results) == 1 else tuple(results)


_NO_PLAN = object()


def _layout(args: tuple, kwargs: dict) -> tuple | None:
    """What a fast call must match: per argument its class, shape and dtype, and the output
    names given; None where an argument is of another kind (a fast call needs `DeviceArray`s
    and numpy scalars)."""
    keys = []
    for value in args:
        if type(value) is DeviceArray:
            keys.append((value.shape, value.dtype))
        elif isinstance(value, np.generic):
            keys.append(value.dtype)
        else:
            return None
    for value in kwargs.values():
        if type(value) is not DeviceArray:
            return None
        keys.append((value.shape, value.dtype))
    return tuple(keys), tuple(kwargs)


def _plan_of(signature: Signature, args: tuple, kwargs: dict, result: Any) -> tuple | None:
    """The plan of a call `bind_device_call` accepted: its layout and each output's
    parameter, shape and dtype; None when the call cannot be repeated by `_fast_call`."""
    from tdsl.runtime.signature import numpy_dtype

    layout = _layout(args, kwargs)
    results = result if isinstance(result, tuple) else (result,)
    if layout is None or len(args) != len(signature.inputs) or \
            any(type(r) is not DeviceArray for r in results):
        return None
    if any(isinstance(a, np.generic) and a.dtype != numpy_dtype(p.type.dtype)
           for a, p in zip(args, signature.inputs)):
        return None  # a scalar the slow path converted
    return layout, tuple((p, r.shape, r.dtype) for p, r in zip(signature.outputs, results))


def compile_kernel(kernel: Kernel, arch: str | None = None) -> CudaExecutable:
    """Compile a checked kernel to PTX and host code (no GPU needed until it is called), or
    take it from the `TDSL_CUDA_BUNDLES` folder (`tdsl.runtime.cuda_bundle`)."""
    from tdsl.runtime import cuda_bundle

    target = arch or default_arch()
    where = cuda_bundle.folder()
    if where is None:
        return _compile(kernel, target)
    return cuda_bundle.compile_through_folder(kernel, target, where,
                                              lambda: _compile(kernel, target))


def _compile(kernel: Kernel, target: str) -> CudaExecutable:
    from tdsl.gpu_pipeline import run_gpu_pipeline

    start = time.perf_counter()
    result = run_gpu_pipeline(kernel, until="llvm", arch=target, keep=["gpu"])
    if result.ptx is None or result.host_llvm is None:
        raise CudaError(f"the GPU pipeline produced no code for '{kernel.name}'")
    seconds = dict(result.timings)
    seconds["total"] = time.perf_counter() - start
    return CudaExecutable(kernel.signature, result.ptx, result.host_llvm, target,
                          result.entries, seconds, result.ir["gpu"])
