"""Native kernel calls: the compiled `tdsl_py_<kernel>` entry (`tdsl.codegen.pycall`) as a
Python builtin function, and the table it reads.

A call through it costs about as much as calling a C extension: it checks its arguments
against the table's plans in machine code (the dtypes, shapes and strides of the last two
calls the Python path validated), allocates the outputs, releases the GIL and runs the
kernel. Any other call (new shapes, lists, subclasses, unusual scalars, wrong arguments) goes
to the fallback, the Python path, which validates it like every call, raises the usual
errors, and writes a plan for its shapes (`NativeEntry.write_plan`), so the next call with
them is native again.

The entry relies on CPython and numpy object layouts; `supported()` checks them on the
running interpreter and numpy (a free-threaded build or a different layout disables native
calls, and calls take the Python path).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tdsl.codegen import pycall_table
from tdsl.runtime import threads
from tdsl.runtime.signature import Signature, numpy_dtype
from tdsl.types import DType

_METH_FASTCALL_KEYWORDS = 0x0080 | 0x0002


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


class _Table(np.ndarray):
    """The int64 table (an ndarray subclass only so that it can keep Python objects alive:
    the words hold raw pointers to them)."""


def _address(name: str) -> int:
    return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value or 0


def _at(obj: object, offset: int, ctype: type) -> Any:
    return ctype.from_address(id(obj) + offset).value


def enabled() -> bool:
    """True when kernels are called through their native entries (`TDSL_NATIVE_CALLS=0`
    turns them off; they need a supported interpreter)."""
    return os.environ.get("TDSL_NATIVE_CALLS", "1") != "0" and supported()


@functools.lru_cache(maxsize=1)
def supported() -> bool:
    """True when this interpreter and numpy lay their objects out as the entry expects."""
    if sys.maxsize != 2 ** 63 - 1 or not hasattr(ctypes, "pythonapi"):
        return False
    lay = pycall_table.LAYOUT
    try:
        a = np.zeros((3, 4), np.float32)[:, 1:]
        t = (a, 1.5)
        checks = [
            _at(1.5, lay["ob_type"], ctypes.c_void_p) == id(float),
            _at(a, lay["ob_type"], ctypes.c_void_p) == id(np.ndarray),
            _at(t, lay["ob_size"], ctypes.c_ssize_t) == 2,
            _at(t, lay["tuple_items"], ctypes.c_void_p) == id(a),
            _at(t, lay["tuple_items"] + 8, ctypes.c_void_p) == id(t[1]),
            _at(2.75, lay["float_value"], ctypes.c_double) == 2.75,
            _at(np.float32(1.5), lay["scalar_value"], ctypes.c_float) == 1.5,
            _at(np.int64(-7), lay["scalar_value"], ctypes.c_int64) == -7,
            _at(np.float64(0.25), lay["scalar_value"], ctypes.c_double) == 0.25,
            _at(a, lay["array_data"], ctypes.c_void_p) == a.ctypes.data,
            _at(a, lay["array_nd"], ctypes.c_int) == 2,
            _at(a, lay["array_descr"], ctypes.c_void_p) == id(a.dtype),
            _at(a, lay["array_flags"], ctypes.c_int) & pycall_table.NPY_ALIGNED != 0,
        ]
        dims = _at(a, lay["array_dims"], ctypes.c_void_p)
        strides = _at(a, lay["array_strides"], ctypes.c_void_p)
        checks.append((ctypes.c_int64 * 2).from_address(dims)[:] == list(a.shape))
        checks.append((ctypes.c_int64 * 2).from_address(strides)[:] == list(a.strides))
        readonly = np.zeros(2)
        readonly.flags.writeable = False
        checks.append(_at(readonly, lay["array_flags"], ctypes.c_int) &
                      pycall_table.NPY_WRITEABLE == 0)
        return all(checks)
    except (ValueError, OSError, AttributeError):
        return False


def _extent(array: np.ndarray) -> int:
    """Bytes from the first element to the end of the last (0 for an empty array)."""
    if array.size == 0:
        return 0
    return array.itemsize + sum((n - 1) * s for n, s in zip(array.shape, array.strides))


def _scalar_type_id(dtype: DType) -> int:
    """The numpy scalar type whose objects the entry reads directly (none for bf16, whose
    scalar objects are ml_dtypes')."""
    if dtype is DType.BF16:
        return 0
    return id(numpy_dtype(dtype).type)


class NativeEntry:
    """A kernel's native entry: `function` is the builtin to call like the kernel."""

    def __init__(self, signature: Signature, address: int, fallback: Callable[..., Any],
                 omp: ctypes.CDLL | None):
        layout = pycall_table.table_layout(signature)
        self.signature = signature
        self.fallbacks = 0  # calls the entry handed to the Python path

        def python_path(*args: Any, **kwargs: Any) -> Any:
            self.fallbacks += 1
            return fallback(*args, **kwargs)

        self.layout = layout
        table = np.zeros(layout.words, np.int64).view(_Table)
        table.keep = [python_path]  # objects whose addresses the words hold
        table.plan_keep = []
        active, num_threads, python_active = threads.native_counters()
        t = pycall_table
        header = {
            t.FALLBACK: id(python_path),
            t.VECTORCALL: _address("PyObject_Vectorcall"),
            t.INCREF: _address("Py_IncRef"),
            t.DECREF: _address("Py_DecRef"),
            t.SAVE_THREAD: _address("PyEval_SaveThread"),
            t.RESTORE_THREAD: _address("PyEval_RestoreThread"),
            t.GETITEM: _address("PyObject_GetItem"),
            t.EMPTY_TUPLE: id(()),
            t.TUPLE_PACK: _address("PyTuple_Pack"),
            t.NDARRAY_TYPE: id(np.ndarray),
            t.FLOAT_TYPE: id(float),
            t.LONG_TYPE: id(int),
            t.AS_LONG_LONG: _address("PyLong_AsLongLongAndOverflow"),
            t.NP_EMPTY: id(np.empty),
            t.OMP_SET: (ctypes.cast(omp.omp_set_num_threads, ctypes.c_void_p).value
                        if omp is not None else 0),
            t.ACTIVE: active,
            t.NUM_THREADS: num_threads,
            t.PY_ACTIVE: python_active,
            t.ERR_CLEAR: _address("PyErr_Clear"),
        }
        for index, value in header.items():
            table[index] = value
        # Words that are the same in every plan: rank-0 inputs' dtypes, the outputs' names.
        self._fixed: list[tuple[int, int]] = []
        for param, words in zip(signature.inputs, layout.inputs):
            if words.rank == 0:
                descr = numpy_dtype(param.type.dtype)
                table.keep.append(descr)
                self._fixed += [(words.descr, id(descr)),
                                (words.scalar_type, _scalar_type_id(param.type.dtype))]
        for param, words in zip(signature.outputs, layout.outputs):
            name = sys.intern(param.name)
            table.keep.append(name)
            self._fixed.append((words.name, id(name)))
        for plan in range(pycall_table.PLANS):
            for index, value in self._fixed:
                table[index + plan * layout.plan_words] = value
        self.table = table
        self._method = _MethodDef(pycall_table.native_symbol(signature.name).encode(), address,
                                  _METH_FASTCALL_KEYWORDS, None)
        table.keep.append(self._method)
        make = ctypes.pythonapi.PyCFunction_NewEx
        make.restype = ctypes.py_object
        make.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]
        self.function = make(ctypes.addressof(self._method), table, None)
        self._planned: list[tuple | None] = [None] * pycall_table.PLANS  # each plan's call key
        self._next = 0  # the plan the next new key replaces
        self._words: dict[tuple, tuple[np.ndarray, list[object]]] = {}
        self._lock = threading.Lock()

    def write_plan(self, inputs: Sequence[np.ndarray], given: Sequence[np.ndarray | None],
                   shapes: Sequence[tuple[int, ...]]) -> None:
        """Make the entry take calls like this one: `inputs` are the call's arrays (rank-0
        inputs as 0-d arrays), `given` its outputs passed by name (None where allocated),
        `shapes` the output shapes. The caller validated the call."""
        key = (tuple((id(a.dtype), a.shape, a.strides) for a in inputs),
               tuple(None if g is None else (id(g.dtype), g.shape, g.strides) for g in given),
               tuple(shapes))
        if key in self._planned:
            return
        with self._lock:  # two threads falling back at once must not interleave their writes
            self._write(key, inputs, given, shapes)

    def _write(self, key: tuple, inputs: Sequence[np.ndarray],
               given: Sequence[np.ndarray | None], shapes: Sequence[tuple[int, ...]]) -> None:
        if key in self._planned:
            return
        cached = self._words.get(key)
        if cached is None:
            if len(self._words) >= 16:
                self._words.clear()
            cached = self._words[key] = self._plan_words(inputs, given, shapes)
        words, keep = cached
        plan = self._next
        self._next = (plan + 1) % pycall_table.PLANS
        start = pycall_table.HEADER_WORDS + plan * self.layout.plan_words
        table = self.table
        table[start + self.layout.valid - pycall_table.HEADER_WORDS] = 0
        table[start:start + self.layout.plan_words] = words
        # Older plans' objects stay alive a while: a native call that read their addresses
        # may still be inside np.empty (which can run Python code, e.g. a finalizer).
        table.plan_keep = [keep] + table.plan_keep[:7]
        table[start + self.layout.valid - pycall_table.HEADER_WORDS] = 1
        self._planned[plan] = key

    def _plan_words(self, inputs: Sequence[np.ndarray], given: Sequence[np.ndarray | None],
                    shapes: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, list[object]]:
        """The words of one plan (valid set) and the objects they point to."""
        base = pycall_table.HEADER_WORDS
        words = np.zeros(self.layout.plan_words, np.int64)
        keep: list[object] = []

        def put(index: int, values: Sequence[int]) -> None:
            words[index - base:index - base + len(values)] = values

        for index, value in self._fixed:
            put(index, [value])
        put(self.layout.valid, [1])
        for array, param in zip(inputs, self.layout.inputs):
            if param.rank == 0:
                continue
            keep.append(array.dtype)
            put(param.descr, [id(array.dtype)])
            put(param.dims, array.shape)
            put(param.strides, array.strides)
            put(param.extent, [_extent(array)])
        for g, shape, out, param in zip(given, shapes, self.signature.outputs,
                                        self.layout.outputs):
            put(param.given, [int(g is not None)])
            if g is not None:
                keep.append(g.dtype)
                put(param.descr, [id(g.dtype)])
                put(param.dims, g.shape)
                put(param.strides, g.strides)
                put(param.extent, [_extent(g)])
                continue
            shape_tuple, dtype = tuple(int(n) for n in shape), numpy_dtype(out.type.dtype)
            keep += [shape_tuple, dtype]
            put(param.shape, [id(shape_tuple), id(dtype)])
        return words, keep
