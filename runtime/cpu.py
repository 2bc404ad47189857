"""Calling compiled CPU kernels: numpy arrays -> memref descriptors -> machine code.

The compiled entry point is `void tdsl_entry_<kernel>(int64_t *args)`; `args` holds, for each
input then each output, the fields of its memref descriptor in 8-byte slots: allocated
pointer, aligned pointer, offset, sizes[rank], strides[rank] (in elements). Rank-0 parameters
(scalars too) have three slots. The call goes through a ctypes `CFUNCTYPE`, which releases the
GIL; every call builds its own slot array, so calls from many threads at once are safe.

Arrays are passed without copies when their strides are non-negative multiples of the item
size and their data is aligned. Otherwise (negative strides, odd byte strides, unaligned data)
an input is copied to a contiguous array, and an output is computed into a fresh array and
copied back. Outputs that may overlap an input or another output are handled the same way, so
the kernel may assume that its arguments do not alias (the compiled code marks them
`noalias`).

This module imports neither lark nor the MLIR bindings: `compile_kernel` imports the compiler
lazily.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tdsl.runtime import threads
from tdsl.runtime.signature import BoundCall, Signature

if TYPE_CHECKING:
    from tdsl.checked import Kernel

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _passable(a: np.ndarray) -> bool:
    """True when `a` can be described by a memref without a copy."""
    if not a.flags.aligned:
        return False
    size = a.itemsize
    return all(s >= 0 and s % size == 0 for s in a.strides)


def _describe(a: np.ndarray, slots: list[int]) -> tuple[int, int]:
    """Append `a`'s memref descriptor to `slots`; return its byte range [low, high)."""
    ptr = a.ctypes.data
    size = a.itemsize
    shape = a.shape
    strides = a.strides
    slots += (ptr, ptr, 0)
    slots += shape
    slots += [s // size for s in strides]
    if 0 in shape:
        return ptr, ptr
    return ptr, ptr + size + sum((n - 1) * s for n, s in zip(shape, strides))


@dataclass
class CpuExecutable:
    """A kernel compiled for this CPU and loaded in this process.

    `run(call)` writes the results into `call.outputs` (already allocated, any strides).
    """

    signature: Signature
    address: int
    keepalive: Any = None  # the JIT engine that owns the code
    slots: int = 0
    compile_seconds: dict[str, float] = field(default_factory=dict)
    threaded: bool = False  # calls libomp (tdsl.runtime.threads sets its team size per call)

    def __post_init__(self) -> None:
        self._fn = _ENTRY(self.address)
        self._omp = threads.load() if self.threaded else None
        if not self.slots:
            self.slots = sum(3 + 2 * p.type.rank
                             for p in self.signature.inputs + self.signature.outputs)
        self._slot_array = ctypes.c_int64 * self.slots

    def run(self, call: BoundCall) -> None:
        """Compute the kernel for a validated call (see `Signature.bind`)."""
        slots: list[int] = []
        inputs = [a if _passable(a) else np.ascontiguousarray(a) for a in call.inputs]
        ranges = [_describe(a, slots) for a in inputs]
        copy_back: list[tuple[np.ndarray, np.ndarray]] = []
        outputs: list[np.ndarray] = []
        out_slots: list[list[int]] = []
        for out in call.outputs:
            own: list[int] = []
            if _passable(out):
                low, high = _describe(out, own)
                if low == high or all(high <= lo or hi <= low for lo, hi in ranges):
                    ranges.append((low, high))
                    outputs.append(out)
                    out_slots.append(own)
                    continue
                own.clear()
            fresh = np.empty(out.shape, dtype=out.dtype)  # overlapping or odd strides
            copy_back.append((out, fresh))
            ranges.append(_describe(fresh, own))
            outputs.append(fresh)
            out_slots.append(own)
        for own in out_slots:
            slots += own
        args = self._slot_array(*slots)  # must outlive the call: keep it in a local
        if self._omp is None:
            self._fn(ctypes.addressof(args))
        else:
            threads.enter_call(self._omp)
            try:
                self._fn(ctypes.addressof(args))
            finally:
                threads.exit_call()
        del args, inputs, outputs  # the arrays too stay alive until the call returned
        for given, fresh in copy_back:
            np.copyto(given, fresh)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Validate, allocate outputs, run and return like a tdsl kernel call."""
        call = self.signature.bind(args, kwargs)
        call.allocate_outputs()
        self.run(call)
        return call.result()


def compile_kernel(kernel: Kernel) -> CpuExecutable:
    """Compile a checked kernel for the host CPU and load it (MLIR -> LLVM -> MCJIT)."""
    from tdsl.codegen import llvm as cg
    from tdsl.pipelines import compile_to_llvm_ir, entry_symbol

    t0 = time.perf_counter()
    llvm_ir = compile_to_llvm_ir(kernel)
    t1 = time.perf_counter()
    mod = cg.optimize_ir(llvm_ir)
    t2 = time.perf_counter()
    code = cg.jit(mod)
    address = code.address(entry_symbol(kernel.name))
    t3 = time.perf_counter()
    return CpuExecutable(kernel.signature, address, keepalive=code,
                         compile_seconds={"mlir": t1 - t0, "llvm_opt": t2 - t1, "jit": t3 - t2},
                         threaded=cg.uses_openmp(mod))
