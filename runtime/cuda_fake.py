"""A stand-in for the CUDA driver that runs each launched kernel with the GPU emulator.

It lets the whole CUDA runtime path run on a machine without a GPU: the JIT-compiled host
code, the mgpu* callbacks, argument packing (memref descriptors in the launch's parameter
array), launch shapes, device allocations and copies. "Device" memory is host memory here;
kernels are found by their PTX entry names in the `gpu` stage given to `add_program`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import ml_dtypes
import numpy as np

from tdsl.runtime.cuda_driver import CudaError, DeviceInfo
from tdsl.runtime.gpu_emulator import Machine, MemRef, Program, load_program
from tdsl.runtime.gpu_emulator_ops import numpy_type

_SCALARS = {"index": ctypes.c_int64, "i64": ctypes.c_int64, "i32": ctypes.c_int32,
            "i16": ctypes.c_int16, "i8": ctypes.c_int8, "i1": ctypes.c_bool,
            "f32": ctypes.c_float, "f64": ctypes.c_double, "f16": ctypes.c_uint16,
            "bf16": ctypes.c_uint16}


class FakeDriver:
    """The `tdsl.runtime.cuda_driver.Driver` interface, on host memory and the emulator."""

    def __init__(self) -> None:
        self.info = DeviceInfo("tdsl GPU emulator", (8, 0), 1, 0, 0)
        self.kernels: dict[str, tuple[Program, str]] = {}
        self.buffers: dict[int, np.ndarray] = {}
        self.modules: list[list[str]] = []
        self.functions: list[str] = []
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        self.allocated = 0

    def add_program(self, gpu_stage: str) -> None:
        """Make the kernels of a `gpu` stage text launchable by their names."""
        program = load_program(gpu_stage)
        for symbol in program.kernels:
            self.kernels[symbol.split("::")[-1]] = (program, symbol)

    # ---- streams and memory ---------------------------------------------------------------
    def stream(self) -> int:
        return 1

    def synchronize(self, stream: int) -> None:
        return None

    def alloc(self, size: int, stream: int) -> int:
        if size <= 0:
            return 0
        buffer = np.empty(size + 64, dtype=np.uint8)
        start = (-buffer.ctypes.data) % 64
        ptr = buffer.ctypes.data + start
        self.buffers[ptr] = buffer[start:start + size]
        self.allocated += 1
        return ptr

    def free(self, ptr: int, stream: int) -> None:
        if not ptr:
            return
        if ptr not in self.buffers:
            raise CudaError(f"free of unknown device pointer {ptr:#x}")
        del self.buffers[ptr]
        self.allocated -= 1

    def copy(self, dst: int, src: int, size: int, stream: int) -> None:
        if size > 0:
            ctypes.memmove(dst, src, size)

    def memset32(self, dst: int, value: int, count: int, stream: int) -> None:
        (ctypes.c_uint32 * count).from_address(dst)[:] = [value] * count

    def memset16(self, dst: int, value: int, count: int, stream: int) -> None:
        (ctypes.c_uint16 * count).from_address(dst)[:] = [value] * count

    # ---- modules and launches -------------------------------------------------------------
    def load_module(self, image: bytes) -> int:
        from tdsl.codegen.ptx import ptx_entries

        names = ptx_entries(image.rstrip(b"\0").decode())
        missing = [n for n in names if n not in self.kernels]
        if missing or not names:
            raise CudaError(f"fake driver: no emulated program for kernels {missing or names}")
        self.modules.append(names)
        return len(self.modules)

    def function(self, module: int, name: bytes) -> int:
        text = name.decode()
        if not 0 < module <= len(self.modules) or text not in self.modules[module - 1]:
            raise CudaError(f"fake driver: no kernel {text} in module {module}")
        self.functions.append(text)
        return len(self.functions)

    def launch(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int],
               shared: int, stream: int, params: int) -> None:
        name = self.functions[function - 1]
        program, symbol = self.kernels[name]
        kernel = program.kernels[symbol]
        slots = sum(3 + 2 * int(t.split(":")[2]) if t.startswith("memref:") else 1
                    for t in kernel.types)
        pointers = (ctypes.c_void_p * max(slots, 1)).from_address(params) if slots else []
        args, k = [], 0
        for type_ in kernel.types:
            if type_.startswith("memref:"):
                _, elem, rank = type_.split(":")
                args.append(self._memref(pointers[k:k + 3 + 2 * int(rank)], elem, int(rank)))
                k += 3 + 2 * int(rank)
            else:
                args.append(self._scalar(pointers[k], type_))
                k += 1
        self.launches.append((name, tuple(grid), tuple(block)))
        Machine(program).launch(symbol, tuple(grid), tuple(block), args)

    def _scalar(self, ptr: int, type_: str) -> Any:
        if type_ not in _SCALARS:
            raise CudaError(f"fake driver: kernel argument of type {type_}")
        value = _SCALARS[type_].from_address(ptr).value
        if type_ in ("f16", "bf16"):
            dtype = np.float16 if type_ == "f16" else ml_dtypes.bfloat16
            return np.asarray(value, dtype=np.uint16).view(dtype)
        return np.asarray(value, dtype=numpy_type(type_))

    def _memref(self, fields: list, elem: str, rank: int) -> MemRef:
        values = [ctypes.c_int64.from_address(p).value for p in fields]
        aligned, offset = values[1], values[2]
        sizes, strides = tuple(values[3:3 + rank]), tuple(values[3 + rank:3 + 2 * rank])
        dtype = np.dtype(np.int8) if elem == "i1" else numpy_type(elem)
        if not aligned:
            return MemRef(np.zeros(0, dtype=dtype), 0, sizes, strides)
        for base, buffer in self.buffers.items():
            if base <= aligned < base + buffer.size:
                start = aligned - base
                usable = (buffer.size - start) // dtype.itemsize
                data = buffer[start:start + usable * dtype.itemsize].view(dtype)
                return MemRef(data, offset, sizes, strides)
        raise CudaError(f"fake driver: kernel argument points outside device memory "
                        f"({aligned:#x})")
