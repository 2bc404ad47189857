"""A thin ctypes layer over the CUDA driver API (`libcuda.so.1`): the calls tdsl needs.

Nothing is loaded at import. `driver()` loads the library, initializes it, retains the primary
context of device 0 (or `$TDSL_CUDA_DEVICE`) and makes it current in the calling thread; where
the library, the driver or a device is missing it raises one `CudaUnavailableError` that says
what is missing. Every failing driver call raises `CudaError` with the driver's error name.

Memory comes from the stream-ordered allocator (`cuMemAllocAsync`, which caches freed blocks)
where the driver has it, else from `cuMemAlloc`. Each thread has its own non-blocking stream.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

LIBRARY = "libcuda.so.1"

_c = ctypes
_CU_JIT_ERROR_LOG_BUFFER = 5
_CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
_CU_STREAM_NON_BLOCKING = 1
_CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4
_ATTRS = {"sm_count": 16, "memory_clock_khz": 36, "bus_width_bits": 37, "cc_major": 75,
          "cc_minor": 76}


class CudaUnavailableError(OSError, RuntimeError):
    """No usable CUDA driver or device in this process (compiling to PTX still works). An
    OSError, so that the command line reports it as an environment problem, not a bug."""


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


@dataclass(frozen=True)
class DeviceInfo:
    """The device tdsl runs on."""

    name: str
    capability: tuple[int, int]
    sm_count: int
    memory_clock_khz: int
    bus_width_bits: int

    @property
    def arch(self) -> str:
        """`sm_XY` of the device."""
        return f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def peak_bandwidth_gbs(self) -> float:
        """Theoretical DRAM bandwidth in GB/s (double data rate)."""
        return 2.0 * self.memory_clock_khz * 1e3 * self.bus_width_bits / 8 / 1e9


class Driver:
    """The driver API calls tdsl uses, bound to one device's primary context."""

    def __init__(self, lib: ctypes.CDLL, ordinal: int):
        self.lib = lib
        self._local = threading.local()
        self._modules: dict[bytes, int] = {}
        self._functions: dict[tuple[int, bytes], int] = {}
        self._lock = threading.Lock()
        self._check(lib.cuInit(0), "cuInit", unavailable=True)
        count = _c.c_int(0)
        self._check(lib.cuDeviceGetCount(_c.byref(count)), "cuDeviceGetCount", unavailable=True)
        if count.value <= ordinal:
            raise CudaUnavailableError(
                f"tdsl target 'cuda': the CUDA driver found {count.value} device(s), so device "
                f"{ordinal} does not exist (set TDSL_CUDA_DEVICE or CUDA_VISIBLE_DEVICES)")
        device = _c.c_int(0)
        self._check(lib.cuDeviceGet(_c.byref(device), ordinal), "cuDeviceGet")
        self.device = device.value
        context = _c.c_void_p()
        self._check(lib.cuDevicePrimaryCtxRetain(_c.byref(context), self.device),
                    "cuDevicePrimaryCtxRetain", unavailable=True)
        self.context = context.value
        self.has_async_alloc = hasattr(lib, "cuMemAllocAsync")
        self.info = self._info()
        self.pool_keep_bytes = self._keep_pool_memory() if self.has_async_alloc else 0

    def _keep_pool_memory(self) -> int:
        """Let the device's default memory pool (behind `cuMemAllocAsync`) keep up to
        `$TDSL_CUDA_POOL_KEEP_BYTES` (default: half the device's memory) between calls.
        Its default threshold, 0, hands every freed byte back at each synchronization, so a
        kernel with a large temporary mapped it afresh on every call. Best effort: returns the
        threshold set, 0 where the driver refused."""
        total = _c.c_size_t(0)
        if self.lib.cuDeviceTotalMem_v2(_c.byref(total), self.device) != 0:
            return 0
        configured = os.environ.get("TDSL_CUDA_POOL_KEEP_BYTES", "").strip()
        keep = int(configured) if configured.isdigit() else total.value // 2
        pool = _c.c_void_p()
        if self.lib.cuDeviceGetDefaultMemPool(_c.byref(pool), self.device) != 0:
            return 0
        threshold = _c.c_uint64(keep)
        if self.lib.cuMemPoolSetAttribute(pool, _CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                                          _c.byref(threshold)) != 0:
            return 0
        return keep

    # ---- errors and setup -----------------------------------------------------------------
    def _error_text(self, code: int) -> str:
        name, text = _c.c_char_p(), _c.c_char_p()
        self.lib.cuGetErrorName(code, _c.byref(name))
        self.lib.cuGetErrorString(code, _c.byref(text))
        return f"{(name.value or b'CUDA_ERROR').decode()} ({(text.value or b'').decode()})"

    def _check(self, code: int, call: str, unavailable: bool = False) -> None:
        if code == 0:
            return
        message = f"{call} failed: {self._error_text(code)}"
        if unavailable:
            raise CudaUnavailableError(f"tdsl target 'cuda': {message}; is an NVIDIA GPU "
                                       "present and its driver working?")
        raise CudaError(message)

    def make_current(self) -> None:
        """Make the primary context current in this thread (once per thread)."""
        if getattr(self._local, "current", False):
            return
        self._check(self.lib.cuCtxSetCurrent(_c.c_void_p(self.context)), "cuCtxSetCurrent")
        self._local.current = True

    def _info(self) -> DeviceInfo:
        self.make_current()
        name = _c.create_string_buffer(256)
        self._check(self.lib.cuDeviceGetName(name, 256, self.device), "cuDeviceGetName")
        values = {}
        for key, attr in _ATTRS.items():
            value = _c.c_int(0)
            self._check(self.lib.cuDeviceGetAttribute(_c.byref(value), attr, self.device),
                        "cuDeviceGetAttribute")
            values[key] = value.value
        return DeviceInfo(name.value.decode(), (values["cc_major"], values["cc_minor"]),
                          values["sm_count"], values["memory_clock_khz"],
                          values["bus_width_bits"])

    # ---- streams --------------------------------------------------------------------------
    def stream(self) -> int:
        """This thread's stream (created on first use)."""
        stream = getattr(self._local, "stream", None)
        if stream is None:
            self.make_current()
            handle = _c.c_void_p()
            self._check(self.lib.cuStreamCreate(_c.byref(handle), _CU_STREAM_NON_BLOCKING),
                        "cuStreamCreate")
            stream = self._local.stream = handle.value or 0
        return stream

    def synchronize(self, stream: int) -> None:
        """Wait for the work queued on a stream (kernel faults surface here)."""
        self._check(self.lib.cuStreamSynchronize(_c.c_void_p(stream)), "cuStreamSynchronize")

    # ---- memory ---------------------------------------------------------------------------
    def alloc(self, size: int, stream: int) -> int:
        """`size` bytes of device memory (0 for an empty allocation)."""
        if size <= 0:
            return 0
        ptr = _c.c_uint64(0)
        if self.has_async_alloc:
            code = self.lib.cuMemAllocAsync(_c.byref(ptr), _c.c_size_t(size), _c.c_void_p(stream))
            self._check(code, f"cuMemAllocAsync({size} bytes)")
        else:
            self._check(self.lib.cuMemAlloc_v2(_c.byref(ptr), _c.c_size_t(size)),
                        f"cuMemAlloc({size} bytes)")
        return ptr.value

    def free(self, ptr: int, stream: int) -> None:
        """Release device memory (stream-ordered where the driver allows)."""
        if not ptr:
            return
        if self.has_async_alloc:
            self._check(self.lib.cuMemFreeAsync(_c.c_uint64(ptr), _c.c_void_p(stream)),
                        "cuMemFreeAsync")
        else:
            self._check(self.lib.cuMemFree_v2(_c.c_uint64(ptr)), "cuMemFree")

    def copy(self, dst: int, src: int, size: int, stream: int) -> None:
        """Copy `size` bytes between any two addresses (unified addressing), in order."""
        if size > 0:
            self._check(self.lib.cuMemcpyAsync(_c.c_uint64(dst), _c.c_uint64(src),
                                               _c.c_size_t(size), _c.c_void_p(stream)),
                        "cuMemcpyAsync")

    def memset32(self, dst: int, value: int, count: int, stream: int) -> None:
        """Fill `count` 32-bit words."""
        if count > 0:
            self._check(self.lib.cuMemsetD32Async(_c.c_uint64(dst), _c.c_uint(value),
                                                  _c.c_size_t(count), _c.c_void_p(stream)),
                        "cuMemsetD32Async")

    def memset16(self, dst: int, value: int, count: int, stream: int) -> None:
        """Fill `count` 16-bit words."""
        if count > 0:
            self._check(self.lib.cuMemsetD16Async(_c.c_uint64(dst), _c.c_ushort(value),
                                                  _c.c_size_t(count), _c.c_void_p(stream)),
                        "cuMemsetD16Async")

    # ---- modules and launches -------------------------------------------------------------
    def load_module(self, image: bytes) -> int:
        """A module from PTX (JIT-compiled by the driver; loaded once per process)."""
        with self._lock:
            if image in self._modules:
                return self._modules[image]
            self.make_current()
            log = _c.create_string_buffer(16384)
            options = (_c.c_int * 2)(_CU_JIT_ERROR_LOG_BUFFER, _CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
            values = (_c.c_void_p * 2)(_c.cast(log, _c.c_void_p).value, 16384)
            module = _c.c_void_p()
            data = image if image.endswith(b"\0") else image + b"\0"
            code = self.lib.cuModuleLoadDataEx(_c.byref(module), data, 2, options, values)
            if code != 0:
                raise CudaError(f"cuModuleLoadDataEx failed: {self._error_text(code)}\n"
                                f"{log.value.decode(errors='replace')}")
            self._modules[image] = module.value
            return module.value

    def function(self, module: int, name: bytes) -> int:
        """A kernel of a loaded module by name."""
        key = (module, name)
        if key not in self._functions:
            handle = _c.c_void_p()
            self._check(self.lib.cuModuleGetFunction(_c.byref(handle), _c.c_void_p(module),
                                                     name), f"cuModuleGetFunction({name!r})")
            self._functions[key] = handle.value
        return self._functions[key]

    def launch(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int],
               shared: int, stream: int, params: int) -> None:
        """Queue a kernel (`params` is the address of the array of argument pointers)."""
        self._check(self.lib.cuLaunchKernel(
            _c.c_void_p(function), *(_c.c_uint(v) for v in grid), *(_c.c_uint(v) for v in block),
            _c.c_uint(shared), _c.c_void_p(stream), _c.c_void_p(params), None),
            f"cuLaunchKernel(grid={grid}, block={block})")


_DRIVER: list[Driver] = []
_DRIVER_LOCK = threading.Lock()
_OVERRIDE: list = []


def set_driver(replacement: object | None) -> None:
    """Use another object with the `Driver` interface (e.g. `tdsl.runtime.cuda_fake`'s
    emulator-backed one) instead of the CUDA driver; None restores the real one."""
    _OVERRIDE.clear()
    if replacement is not None:
        _OVERRIDE.append(replacement)


def driver() -> Driver:
    """The process's driver, current in this thread; CudaUnavailableError where there is
    none (the message names what is missing)."""
    if _OVERRIDE:
        return _OVERRIDE[0]
    return system_driver()


def system_driver() -> Driver:
    """The machine's CUDA driver (`libcuda.so.1`), current in this thread, whatever
    `set_driver` installed; CudaUnavailableError where there is none."""
    with _DRIVER_LOCK:
        if not _DRIVER:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as exc:
                raise CudaUnavailableError(
                    f"tdsl target 'cuda' needs the NVIDIA driver library {LIBRARY}, which could "
                    f"not be loaded ({exc}); install the NVIDIA driver on a machine with a GPU. "
                    "Compiling to PTX (tdsl compile --target cuda --emit ptx) works without it."
                ) from None
            ordinal = int(os.environ.get("TDSL_CUDA_DEVICE", "0") or 0)
            _DRIVER.append(Driver(lib, ordinal))
    drv = _DRIVER[0]
    drv.make_current()
    return drv


def available() -> bool:
    """True when a CUDA device can be used in this process."""
    try:
        driver()
    except CudaUnavailableError:
        return False
    return True
