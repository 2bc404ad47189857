"""Semantics of the scalar MLIR operations (`arith`, `math`) for the GPU emulator, on numpy
values (arrays with one lane per thread, or scalars for uniform values).

Integers are signless in MLIR and stored here as signed numpy integers of the same width
(`index` is int64, `i1` is bool); unsigned operations view them as unsigned. Results always
have the numpy dtype of the operation's result type, and integer arithmetic wraps. Lanes of
inactive threads are computed too, so no operation may raise on any input (division by zero
gives an arbitrary value, as in MLIR, where the generated code guards it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
from scipy import special

_DTYPES = {"f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16),
           "f32": np.dtype(np.float32), "f64": np.dtype(np.float64), "i1": np.dtype(np.bool_),
           "i8": np.dtype(np.int8), "i16": np.dtype(np.int16), "i32": np.dtype(np.int32),
           "i64": np.dtype(np.int64), "index": np.dtype(np.int64)}


class EmulatorError(RuntimeError):
    """The emulated program did something a correct GPU program never does."""


def numpy_type(mlir_type: str) -> np.dtype:
    """The numpy dtype of an MLIR scalar type (index is int64, i1 is bool)."""
    if mlir_type not in _DTYPES:
        raise EmulatorError(f"unsupported type {mlir_type}")
    return _DTYPES[mlir_type]


def _fma(a, b, c) -> np.ndarray:
    """a * b + c rounded once, as a GPU's fma does, for f32 and narrower (the product is exact
    in f64; the f64 sum rounds once more only in rare ties); f64 as a * b + c."""
    a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
    if a.dtype.itemsize >= 8:
        return a * b + c
    wide = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)
    return wide.astype(a.dtype)


def _unsigned(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "i":
        return x.view(np.dtype(f"uint{x.dtype.itemsize * 8}"))
    return x


def _signed_like(x: np.ndarray, like: np.dtype) -> np.ndarray:
    return np.asarray(x).astype(np.dtype(f"uint{like.itemsize * 8}")).view(like) \
        if like.kind == "i" else np.asarray(x).astype(like)


def constant(value: bool | int | float, mlir_type: str) -> np.ndarray:
    """A constant of an MLIR type (integers wrapped to the type's width)."""
    dtype = numpy_type(mlir_type)
    if dtype.kind == "i":
        bits = dtype.itemsize * 8
        value = ((int(value) + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))
    return np.asarray(value, dtype=dtype)


# ---- integer division ----------------------------------------------------------------------


def _divsi(a, b):
    a, b = np.asarray(a), np.asarray(b)
    safe = np.where(b == 0, np.ones_like(b), b)
    q = np.floor_divide(a, safe)
    r = a - q * safe
    return q + ((r != 0) & ((a < 0) != (safe < 0))).astype(q.dtype)


def _remsi(a, b):
    a, b = np.asarray(a), np.asarray(b)
    safe = np.where(b == 0, np.ones_like(b), b)
    return a - _divsi(a, safe) * safe


def _divui(a, b):
    ua, ub = _unsigned(a), _unsigned(b)
    safe = np.where(ub == 0, np.ones_like(ub), ub)
    return (ua // safe).view(np.asarray(a).dtype) if np.asarray(a).dtype.kind == "i" else ua // safe


def _remui(a, b):
    ua, ub = _unsigned(a), _unsigned(b)
    safe = np.where(ub == 0, np.ones_like(ub), ub)
    r = ua % safe
    return r.view(np.asarray(a).dtype) if np.asarray(a).dtype.kind == "i" else r


def _floordivsi(a, b):
    b = np.asarray(b)
    return np.floor_divide(a, np.where(b == 0, np.ones_like(b), b))


def _ceildivsi(a, b):
    return -_floordivsi(-np.asarray(a), b)


def _ceildivui(a, b):
    ua, ub = _unsigned(a), _unsigned(b)
    safe = np.where(ub == 0, np.ones_like(ub), ub)
    q = ua // safe + (ua % safe != 0)
    return q.astype(ua.dtype).view(np.asarray(a).dtype)


# ---- comparisons ---------------------------------------------------------------------------

_CMPI: dict[int, Callable] = {
    0: np.equal, 1: np.not_equal, 2: np.less, 3: np.less_equal, 4: np.greater,
    5: np.greater_equal,
    6: lambda a, b: _unsigned(a) < _unsigned(b), 7: lambda a, b: _unsigned(a) <= _unsigned(b),
    8: lambda a, b: _unsigned(a) > _unsigned(b), 9: lambda a, b: _unsigned(a) >= _unsigned(b),
}
_CMPF_BASE: dict[str, Callable] = {"eq": np.equal, "gt": np.greater, "ge": np.greater_equal,
                                   "lt": np.less, "le": np.less_equal, "ne": np.not_equal}
_CMPF_NAMES = ("false", "oeq", "ogt", "oge", "olt", "ole", "one", "ord", "ueq", "ugt", "uge",
               "ult", "ule", "une", "uno", "true")


def _cmpf(predicate: int, a, b) -> np.ndarray:
    name = _CMPF_NAMES[predicate]
    a, b = np.asarray(a), np.asarray(b)
    ordered = ~(np.isnan(a.astype(np.float64)) | np.isnan(b.astype(np.float64)))
    if name in ("false", "true"):
        return np.broadcast_to(np.asarray(name == "true"), np.broadcast(a, b).shape)
    if name == "ord":
        return ordered
    if name == "uno":
        return ~ordered
    result = _CMPF_BASE[name[1:]](a, b)
    return (ordered & result) if name[0] == "o" else (~ordered | result)


# ---- casts ---------------------------------------------------------------------------------


def _extui(x, target: np.dtype):
    x = np.asarray(x)
    return (_unsigned(x).astype(np.uint64).astype(target) if x.dtype.kind == "i"
            else x.astype(target))


def _bitcast(x, target: np.dtype):
    x = np.ascontiguousarray(np.asarray(x))
    return x.view(target)


def _fpto(x, target: np.dtype, unsigned: bool):
    x = np.asarray(x).astype(np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    if unsigned:
        bits = target.itemsize * 8
        return np.trunc(np.clip(x, 0, 2.0 ** bits - 1)).astype(np.uint64).astype(
            np.dtype(f"uint{bits}")).view(target)
    info = np.iinfo(target)
    return np.trunc(np.clip(x, info.min, info.max)).astype(target)


def _int_to_float(x, target: np.dtype, unsigned: bool):
    x = np.asarray(x)
    if not unsigned and x.dtype.kind == "u":  # signless storage read back as unsigned
        x = x.view(np.dtype(f"int{x.dtype.itemsize * 8}"))
    return (_unsigned(x) if unsigned else x).astype(np.float64).astype(target) \
        if target.itemsize < 8 else (_unsigned(x) if unsigned else x).astype(target)


# ---- the table -----------------------------------------------------------------------------

def _binary(fn: Callable) -> Callable:
    return lambda op, a, b: fn(np.asarray(a), np.asarray(b))


def _unary(fn: Callable) -> Callable:
    return lambda op, x: fn(np.asarray(x))


def _i1_aware(fn: Callable, boolean: Callable) -> Callable:
    def apply(op, a, b):
        a, b = np.asarray(a), np.asarray(b)
        return boolean(a, b) if a.dtype == np.bool_ else fn(a, b)
    return apply


def _result(op) -> np.dtype:
    return numpy_type(op.types[0])


_TABLE: dict[str, Callable] = {
    "arith.constant": lambda op: constant(op.attrs["value"], op.types[0]),
    "arith.addf": _binary(np.add), "arith.subf": _binary(np.subtract),
    "arith.mulf": _binary(np.multiply), "arith.divf": _binary(np.divide),
    "arith.remf": _binary(np.fmod), "arith.negf": _unary(np.negative),
    "arith.maximumf": _binary(np.maximum), "arith.minimumf": _binary(np.minimum),
    "arith.maxnumf": _binary(np.fmax), "arith.minnumf": _binary(np.fmin),
    "arith.addi": _i1_aware(np.add, np.logical_xor),
    "arith.subi": _i1_aware(np.subtract, np.logical_xor),
    "arith.muli": _i1_aware(np.multiply, np.logical_and),
    "arith.divsi": _binary(_divsi), "arith.remsi": _binary(_remsi),
    "arith.divui": _binary(_divui), "arith.remui": _binary(_remui),
    "arith.floordivsi": _binary(_floordivsi), "arith.ceildivsi": _binary(_ceildivsi),
    "arith.ceildivui": _binary(_ceildivui),
    "arith.andi": _binary(np.bitwise_and), "arith.ori": _binary(np.bitwise_or),
    "arith.xori": _binary(np.bitwise_xor),
    "arith.shli": lambda op, a, b: np.left_shift(np.asarray(a), np.asarray(b).astype(
        np.asarray(a).dtype)),
    "arith.shrsi": lambda op, a, b: np.right_shift(np.asarray(a), np.asarray(b).astype(
        np.asarray(a).dtype)),
    "arith.shrui": lambda op, a, b: np.right_shift(_unsigned(a), _unsigned(b).astype(
        _unsigned(a).dtype)).view(np.asarray(a).dtype),
    "arith.maxsi": _binary(np.maximum), "arith.minsi": _binary(np.minimum),
    "arith.maxui": lambda op, a, b: _signed_like(np.maximum(_unsigned(a), _unsigned(b)),
                                                 np.asarray(a).dtype),
    "arith.minui": lambda op, a, b: _signed_like(np.minimum(_unsigned(a), _unsigned(b)),
                                                 np.asarray(a).dtype),
    "arith.cmpi": lambda op, a, b: _CMPI[op.attrs["predicate"]](np.asarray(a), np.asarray(b)),
    "arith.cmpf": lambda op, a, b: _cmpf(op.attrs["predicate"], a, b),
    "arith.select": lambda op, c, a, b: np.where(c, a, b),
    "arith.extf": lambda op, x: np.asarray(x).astype(_result(op)),
    "arith.truncf": lambda op, x: np.asarray(x).astype(_result(op)),
    "arith.extsi": lambda op, x: np.asarray(x).astype(_result(op)),
    "arith.extui": lambda op, x: _extui(x, _result(op)),
    "arith.trunci": lambda op, x: np.asarray(x).astype(_result(op)),
    "arith.index_cast": lambda op, x: np.asarray(x).astype(_result(op)),
    "arith.index_castui": lambda op, x: _extui(x, _result(op)),
    "arith.sitofp": lambda op, x: _int_to_float(x, _result(op), False),
    "arith.uitofp": lambda op, x: _int_to_float(x, _result(op), True),
    "arith.fptosi": lambda op, x: _fpto(x, _result(op), False),
    "arith.fptoui": lambda op, x: _fpto(x, _result(op), True),
    "arith.bitcast": lambda op, x: _bitcast(x, _result(op)),
    "math.exp": _unary(np.exp), "math.exp2": _unary(np.exp2), "math.expm1": _unary(np.expm1),
    "math.log": _unary(np.log), "math.log2": _unary(np.log2), "math.log10": _unary(np.log10),
    "math.log1p": _unary(np.log1p), "math.sqrt": _unary(np.sqrt),
    "math.rsqrt": _unary(lambda x: 1 / np.sqrt(x)), "math.sin": _unary(np.sin),
    "math.cos": _unary(np.cos), "math.tan": _unary(np.tan), "math.tanh": _unary(np.tanh),
    "math.atan": _unary(np.arctan), "math.atan2": _binary(np.arctan2),
    "math.erf": _unary(special.erf), "math.floor": _unary(np.floor),
    "math.ceil": _unary(np.ceil), "math.trunc": _unary(np.trunc),
    "math.round": _unary(lambda x: np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))),
    "math.roundeven": _unary(np.rint), "math.absf": _unary(np.abs),
    "math.absi": _unary(np.abs), "math.powf": _binary(np.power),
    "math.copysign": _binary(np.copysign),
    "math.fma": lambda op, a, b, c: _fma(a, b, c),
}


def evaluate(op, args: list) -> np.ndarray:
    """The result of a scalar operation (`op` has `name`, `attrs` and result `types`)."""
    fn = _TABLE.get(op.name)
    if fn is None:
        raise EmulatorError(f"the emulator does not support '{op.name}'")
    value = fn(op, *args)
    return np.asarray(value).astype(_result(op), copy=False)


def all_reduce(kind: str, values: np.ndarray) -> np.ndarray:
    """`gpu.all_reduce` of each row (one block per row) of a 2-D array."""
    dtype = values.dtype
    if kind == "add":
        return np.sum(values, axis=1, dtype=dtype)
    if kind == "mul":
        return np.prod(values, axis=1, dtype=dtype)
    if kind in ("maximumf", "maxsi"):
        return np.max(values, axis=1)
    if kind in ("minimumf", "minsi"):
        return np.min(values, axis=1)
    if kind == "maxnumf":
        return np.fmax.reduce(values, axis=1)
    if kind == "minnumf":
        return np.fmin.reduce(values, axis=1)
    if kind in ("maxui", "minui"):
        fn = np.max if kind == "maxui" else np.min
        return fn(_unsigned(values), axis=1).view(dtype)
    if kind in ("and", "or", "xor"):
        fn = {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[kind]
        return fn.reduce(values, axis=1)
    raise EmulatorError(f"unsupported all_reduce operation '{kind}'")
