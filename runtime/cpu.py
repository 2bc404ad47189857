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
from typing import TYPE_CHECKING, Any

import numpy as np

from tdsl.runtime import native, threads
from tdsl.runtime.record import Record
from tdsl.runtime.signature import BoundCall, Signature, numpy_dtype
from tdsl.types import DType

if TYPE_CHECKING:
    from tdsl.checked import Kernel

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_PLANS_MAX = 64  # call plans kept per kernel (one per distinct set of shapes and strides)


def _data_offset() -> int | None:
    """Where a numpy array object holds its data pointer (`PyArrayObject.data`), checked on
    live arrays; None disables the fast path (an unusual interpreter build)."""
    probes = [np.empty(3), np.zeros((2, 5), np.int8)[:, 1:]]
    for offset in (16,):
        if all(ctypes.c_void_p.from_address(id(a) + offset).value ==
               a.__array_interface__["data"][0] for a in probes):
            return offset
    return None


_DATA_OFFSET = _data_offset()


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


def _quick_scalar(dtype: DType) -> tuple[type, float, float, np.dtype] | None:
    """(Python type, low, high, numpy dtype) of the Python scalars that `np.array(v, dtype)`
    converts exactly like `Signature.bind` does (in range: no overflow, no warning)."""
    if dtype in (DType.F32, DType.F64):
        high = float(np.finfo(numpy_dtype(dtype)).max)
        return float, -high, high, numpy_dtype(dtype)
    if dtype.is_int:
        low, high = dtype.int_range
        return int, low, high, numpy_dtype(dtype)
    return None


def _describe_row_major(shape: tuple[int, ...], slots: list[int]) -> None:
    """Append the descriptor of a fresh row-major array of `shape`, data pointers left 0."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    slots += (0, 0, 0)
    slots += shape
    slots += reversed(strides)


class _Plan(Record):
    """What a fast call needs beyond its arrays' data pointers."""

    __slots__ = ("template", "template_address", "outputs", "scalar_results", "single")
    template: Any  # the ctypes slot array (kept alive with the plan)
    template_address: int
    outputs: list[tuple[tuple[int, ...], np.dtype]]
    scalar_results: bool  # some output is rank 0: returned as a numpy scalar
    single: tuple[tuple[int, ...], np.dtype] | None  # the output, when there is one


class CpuExecutable:
    """A kernel compiled for this CPU and loaded in this process.

    `run(call)` writes the results into `call.outputs` (already allocated, any strides).
    `keepalive` holds what owns the code (the JIT engine or the library); `threaded`: the code
    calls libomp (tdsl.runtime.threads sets its team size per call); `fast_address`:
    `tdsl_fast_<kernel>`, 0 where the library has none; `native_address`: `tdsl_py_<kernel>`
    (tdsl.codegen.pycall), 0 where none.
    """

    def __init__(self, signature: Signature, address: int, keepalive: Any = None,
                 slots: int = 0, compile_seconds: dict[str, float] | None = None,
                 threaded: bool = False, fast_address: int = 0,
                 native_address: int = 0) -> None:
        self.signature = signature
        self.address = address
        self.keepalive = keepalive
        self.slots = slots
        self.compile_seconds = {} if compile_seconds is None else compile_seconds
        self.threaded = threaded
        self.fast_address = fast_address
        self.native_address = native_address
        self._fn = _ENTRY(self.address)
        self._omp = threads.load() if self.threaded else None
        if not self.slots:
            self.slots = sum(3 + 2 * p.type.rank
                             for p in self.signature.inputs + self.signature.outputs)
        self._slot_array = ctypes.c_int64 * self.slots
        self._plans: dict[tuple, _Plan | None | bool] = {}
        self._scalar_inputs = [p.type.rank == 0 for p in self.signature.inputs]
        self._input_count = len(self.signature.inputs)
        self._output_names = [p.name for p in self.signature.outputs]
        self._scalar_types = [numpy_dtype(p.type.dtype).type if p.type.rank == 0 else None
                              for p in self.signature.inputs]
        self._quick_scalars = [_quick_scalar(p.type.dtype) if p.type.rank == 0 else None
                               for p in self.signature.inputs]
        self._fast = None
        if self.fast_address and _DATA_OFFSET is not None:
            arity = len(self.signature.inputs) + len(self.signature.outputs)
            self._fast = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64,
                                          *[ctypes.py_object] * arity)(self.fast_address)
        self.native = None
        if self.native_address and self._fast is not None and native.enabled():
            self.native = native.NativeEntry(self.signature, self.native_address,
                                             self.__call__, self._omp)

    def fast_call(self, args: tuple, kwargs: dict | None = None) -> Any:
        """The result of a call with positional inputs (and outputs given by name, or not),
        when a plan made by an earlier call with the same dtypes, shapes and strides applies;
        else None (a kernel always returns something).

        A plan is made after a full validation (`Signature.bind`) of a call whose arrays are
        plain aligned ndarrays passed as they are; it holds the packed descriptor fields and the
        shapes of the outputs to allocate, so a call only reads its arrays' data pointers (in
        machine code). Given outputs that may overlap an array take the full path."""
        fast = self._fast
        if fast is None or len(args) != self._input_count:
            return None
        key = []
        for a in args:
            if type(a) is np.ndarray and a.flags.aligned:
                key.append((a.dtype, a.shape, a.strides))
            else:
                key.append(None)
        if None in key:
            args = self._convert_scalars(args, key)
            if args is None:
                return None
        given = self._given_outputs(args, kwargs) if kwargs else None
        if kwargs and given is None:
            return None
        if given is not None:
            key.append(tuple(None if g is None else (g.dtype, g.shape, g.strides)
                             for g in given))
        key = tuple(key)
        plan = self._plans.get(key, False)
        if plan is False:
            plan = self._make_plan(key, args, kwargs or {}, given)
        if plan is None:
            return None
        if self.native is not None:
            self.native.write_plan(args, given or (None,) * len(plan.outputs),
                                   [shape for shape, _ in plan.outputs])
        single = plan.single
        if single and given is None:
            outs = (np.empty(*single),)
        else:
            outs = tuple(np.empty(*alloc) if g is None else g for alloc, g in
                         zip(plan.outputs, given or (None,) * len(plan.outputs)))
        omp = self._omp
        if omp is not None:
            threads.enter_call(omp)
            try:
                fast(plan.template_address, _DATA_OFFSET, *args, *outs)
            finally:
                threads.exit_call()
        else:
            fast(plan.template_address, _DATA_OFFSET, *args, *outs)
        if plan.scalar_results:
            outs = tuple(o[()] if o.ndim == 0 and (given is None or g is None) else o
                         for o, g in zip(outs, given or (None,) * len(outs)))
        return outs[0] if len(outs) == 1 else outs

    def _given_outputs(self, args: tuple, kwargs: dict) -> list | None:
        """The outputs passed by name, in signature order (None where the call allocates), when
        each is a plain aligned writeable ndarray that shares no memory with another argument;
        else None (the full path decides)."""
        given = [kwargs.get(name) for name in self._output_names]
        if sum(g is not None for g in given) != len(kwargs):
            return None  # an input by name, or an unknown name
        for index, g in enumerate(given):
            if g is None:
                continue
            if type(g) is not np.ndarray or not g.flags.aligned or not g.flags.writeable:
                return None
            others = list(args) + [h for h in given[index + 1:] if h is not None]
            if any(np.may_share_memory(g, other) for other in others):
                return None
        return given

    def _convert_scalars(self, args: tuple, key: list) -> tuple | None:
        """Python and numpy scalars for rank-0 inputs as rank-0 arrays; None when some other
        argument is not a plain ndarray (a list, a subclass: the full path takes it)."""
        converted = []
        for index, (a, k) in enumerate(zip(args, key)):
            if k is not None:
                converted.append(a)
            elif self._scalar_inputs[index] and not isinstance(a, np.ndarray):
                quick = self._quick_scalars[index]
                if type(a) is self._scalar_types[index]:  # a numpy scalar of the dtype
                    converted.append(np.array(a))
                elif quick is not None and type(a) is quick[0] and quick[1] <= a <= quick[2]:
                    converted.append(np.array(a, quick[3]))  # exact, or rounded once
                else:
                    converted.append(self.signature.input_array(index, a))
            else:
                return None  # an unaligned array, a subclass, a list
        return tuple(converted)

    def _make_plan(self, key: tuple, args: tuple, kwargs: dict,
                   given: list | None) -> _Plan | None:
        call = self.signature.bind(args, kwargs)  # raises the usual errors for a bad call
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()
        given = given or [None] * len(self.signature.outputs)
        usable = all(b is a and _passable(a) for a, b in zip(args, call.inputs)) and all(
            g is b and (g is None or _passable(g)) for g, b in zip(given, call.given_outputs))
        if not usable:
            self._plans[key] = None
            return None
        slots: list[int] = []
        for a in call.inputs:
            _describe(a, slots)
        outputs = []
        for param, shape, g in zip(self.signature.outputs, call.output_shapes, given):
            dtype = numpy_dtype(param.type.dtype)
            outputs.append((shape, dtype))
            if g is None:
                _describe_row_major(shape, slots)
            else:
                own: list[int] = []
                _describe(g, own)
                slots += [0, 0] + own[2:]  # the data pointers come from the array at the call
        template = self._slot_array(*slots)
        plan = _Plan(template, ctypes.addressof(template), outputs,
                     any(len(shape) == 0 for shape, _ in outputs),
                     outputs[0] if len(outputs) == 1 else None)
        self._plans[key] = plan
        return plan

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
        result = self.fast_call(args, kwargs)
        if result is not None:
            return result
        call = self.signature.bind(args, kwargs)
        call.allocate_outputs()
        self.run(call)
        return call.result()


def compile_kernel(kernel: Kernel) -> CpuExecutable:
    """Compile a checked kernel for the host CPU and load it (MLIR -> LLVM -> MCJIT)."""
    from tdsl.codegen import llvm as cg
    from tdsl.codegen.pycall_table import native_symbol
    from tdsl.pipelines import compile_to_llvm_ir, entry_symbol, fast_symbol

    t0 = time.perf_counter()
    llvm_ir = compile_to_llvm_ir(kernel)
    t1 = time.perf_counter()
    mod = cg.optimize_ir(llvm_ir)
    t2 = time.perf_counter()
    code = cg.jit(mod)
    address = code.address(entry_symbol(kernel.name))
    t3 = time.perf_counter()
    return CpuExecutable(kernel.signature, address, keepalive=code,
                         fast_address=code.address(fast_symbol(kernel.name)),
                         native_address=code.address(native_symbol(kernel.name)),
                         compile_seconds={"mlir": t1 - t0, "llvm_opt": t2 - t1, "jit": t3 - t2},
                         threaded=cg.uses_openmp(mod))
