"""Every scalar operation, cast and reduction of the language on the CPU backend, against
numpy (one compile per dtype: each kernel has one output per operation)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import scipy.special

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt_kernels as hk  # noqa: E402

from tdsl.runtime.cpu import compile_kernel  # noqa: E402
from tdsl.types import DType  # noqa: E402

RNG = np.random.default_rng(99)
BF16 = np.dtype(ml_dtypes.bfloat16)
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1e-30, 3e38]


def outputs(ex, *args) -> dict[str, np.ndarray]:
    """The outputs of a many-output kernel by op name."""
    results = ex(*args)
    names = [p.name[2:] for p in ex.signature.outputs]
    return dict(zip(names, results if isinstance(results, tuple) else (results,)))


def float_values(dtype, n: int = 200) -> np.ndarray:
    values = RNG.uniform(0.05, 4.0, n) * RNG.choice([-1.0, 1.0], n)
    with np.errstate(over="ignore"):
        return np.concatenate([values, SPECIAL]).astype(dtype)


def _numpy_unary(op: str, x: np.ndarray) -> np.ndarray:
    table = {
        "neg": np.negative, "abs": np.abs, "relu": lambda v: np.maximum(v, 0), "exp": np.exp,
        "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda v: 1 / np.sqrt(v), "sin": np.sin,
        "cos": np.cos, "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "erf": scipy.special.erf, "floor": np.floor, "ceil": np.ceil,
    }
    with np.errstate(all="ignore"):
        return table[op](x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_unary_ops(dtype):
    ex = compile_kernel(hk.float_unary(DType(np.dtype(dtype).name.replace("float", "f"))))
    x = float_values(dtype)
    got = outputs(ex, x)
    for op in hk.FLOAT_UNARY:
        if dtype is np.float16:
            expected = _numpy_unary(op, x.astype(np.float32)).astype(np.float16)
            tol = dict(rtol=1e-3, atol=1e-7)
        else:
            expected = _numpy_unary(op, x)
            tol = dict(rtol=2e-6 if dtype is np.float32 else 1e-14, atol=0)
        np.testing.assert_allclose(got[op], expected, err_msg=op, **tol)


def _numpy_binary(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
             "mod": np.remainder, "pow": np.power, "min": np.minimum, "max": np.maximum,
             "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
             "eq": np.equal, "ne": np.not_equal}
    with np.errstate(all="ignore"):
        return table[op](a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16])
def test_float_binary_ops(dtype):
    name = "bf16" if dtype is BF16 else np.dtype(dtype).name.replace("float", "f")
    ex = compile_kernel(hk.float_binary(DType(name)))
    a = float_values(dtype)
    b = np.roll(float_values(dtype), 7)
    got = outputs(ex, a, b)
    for op in hk.FLOAT_BINARY + hk.COMPARISONS:
        if dtype is BF16:
            af, bf = a.astype(np.float32), b.astype(np.float32)
            expected = _numpy_binary(op, af, bf)
            expected = expected if expected.dtype == bool else expected.astype(BF16)
            np.testing.assert_allclose(got[op].astype(np.float32), expected.astype(np.float32),
                                       rtol=1e-2, err_msg=op)
            continue
        expected = _numpy_binary(op, a, b)
        np.testing.assert_allclose(got[op], expected, rtol=1e-6, err_msg=op)
        if op in ("min", "max", "mod"):  # signed zeros and nan placement exactly
            np.testing.assert_array_equal(np.signbit(got[op]), np.signbit(expected), op)


def _int_pow(a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    out = np.empty_like(a)
    bits = np.dtype(dtype).itemsize * 8
    for k, (x, e) in enumerate(zip(a.tolist(), b.tolist())):
        if e >= 0:
            v = pow(x, e, 1 << bits)
        else:
            v = 1 if x == 1 else ((-1) ** (-e) if x == -1 else 0)
        v %= 1 << bits
        out[k] = np.array(v, dtype=np.uint64).astype(dtype) if dtype != np.uint8 else v
    return out


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_ops(dtype):
    name = {np.int32: "i32", np.int64: "i64", np.uint8: "u8", np.int16: "i16"}[dtype]
    ex = compile_kernel(hk.int_ops(DType(name)))
    info = np.iinfo(dtype)
    low = max(info.min, -50)
    a = RNG.integers(low, 50, size=120).astype(dtype)
    b = RNG.integers(max(info.min, -6), 9, size=120).astype(dtype)
    b[:10] = 0
    a[10:12] = info.min
    a[12:14] = info.max
    if info.min < 0:
        b[10] = -1
    got = outputs(ex, a, b)
    with np.errstate(all="ignore"):
        for op in ("add", "sub", "mul", "div", "mod", "min", "max") + hk.COMPARISONS:
            expected = _numpy_binary(op, a, b)
            if op == "div":
                expected = np.floor_divide(a, b)
            np.testing.assert_array_equal(got[op], expected, err_msg=op)
        np.testing.assert_array_equal(got["pow"], _int_pow(a, b, dtype), err_msg="pow")
        np.testing.assert_array_equal(got["u_neg"], np.negative(a))
        np.testing.assert_array_equal(got["u_abs"], np.abs(a))
        np.testing.assert_array_equal(got["u_relu"], np.maximum(a, 0).astype(dtype))


def _saturate(x: np.ndarray, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    values = []
    for v in x.astype(np.float64).tolist():
        if math.isnan(v):
            values.append(0)
        elif v >= info.max:
            values.append(info.max)
        elif v <= info.min:
            values.append(info.min)
        else:
            values.append(int(v))
    return np.array(values, dtype=dtype)


def _check_casts(src_values: np.ndarray, got: dict[str, np.ndarray]) -> None:
    src32 = src_values.astype(np.float64) if src_values.dtype.kind == "f" or \
        src_values.dtype == BF16 else src_values
    for name, out in got.items():
        dst = DType(name)
        if dst is DType.BOOL:
            np.testing.assert_array_equal(out, src_values.astype(np.float64) != 0, name)
        elif dst.is_int and src_values.dtype.kind in "fV" or (dst.is_int and
                                                              src_values.dtype == BF16):
            np.testing.assert_array_equal(out, _saturate(src_values, out.dtype), name)
        elif dst.is_int:
            np.testing.assert_array_equal(out, src_values.astype(out.dtype), name)
        else:
            with np.errstate(over="ignore"):
                expected = src32.astype(out.dtype)
            np.testing.assert_array_equal(out.astype(np.float64), expected.astype(np.float64),
                                          name)


@pytest.mark.parametrize("src", ["f32", "f16", "bf16", "i32", "u8", "bool"])
def test_casts(src):
    dsts = (DType.I8, DType.I16, DType.I32, DType.I64, DType.U8, DType.BOOL, DType.F16,
            DType.BF16, DType.F32, DType.F64)
    src_dtype = DType(src)
    ex = compile_kernel(hk.casts(src_dtype, tuple(d for d in dsts if d is not src_dtype)))
    if src_dtype.is_float:
        npd = {"f32": np.float32, "f16": np.float16, "bf16": BF16}[src]
        values = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.7, -0.7, 1.5, -1.5, 127.9, 128.0,
                  -128.5, -129.0, 255.5, 256.0, 300.0, -300.0, 40000.0, -40000.0, 3e9, -3e9,
                  1e19, -1e19, 1e30, 65504.0]
        with np.errstate(over="ignore"):
            x = np.array(values + RNG.uniform(-500, 500, 40).tolist(), dtype=npd)
    elif src_dtype is DType.BOOL:
        x = RNG.integers(0, 2, 30).astype(bool)
    else:
        npd = np.int32 if src == "i32" else np.uint8
        info = np.iinfo(npd)
        x = np.concatenate([RNG.integers(info.min, info.max, 60, endpoint=True),
                            [info.min, info.max, 0, 1, -1 if info.min else 2, 16777217]])
        x = x.astype(npd)
    _check_casts(x, outputs(ex, x))


def test_bool_logic_and_any_all():
    ex = compile_kernel(hk.bool_ops())
    p = RNG.integers(0, 2, 40).astype(bool)
    q = RNG.integers(0, 2, 40).astype(bool)
    m = RNG.integers(0, 2, (40, 3)).astype(bool)
    m[0] = True
    m[1] = False
    got = outputs(ex, p, q, m)
    np.testing.assert_array_equal(got["and"], p & q)
    np.testing.assert_array_equal(got["or"], p | q)
    np.testing.assert_array_equal(got["not"], ~p)
    np.testing.assert_array_equal(got["eq"], p == q)
    np.testing.assert_array_equal(got["ne"], p != q)
    np.testing.assert_array_equal(got["any"], m.any(axis=1))
    np.testing.assert_array_equal(got["all"], m.all(axis=1))
    np.testing.assert_array_equal(got["sel"], np.where(p, q.astype(np.int32), 7))


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.float16])
def test_reductions(dtype):
    name = {np.float32: "f32", np.int32: "i32", np.uint8: "u8", np.float16: "f16"}[dtype]
    ex = compile_kernel(hk.reductions(DType(name)))
    if np.dtype(dtype).kind == "f":
        x = RNG.uniform(0.8, 1.2, (6, 37)).astype(dtype)
        x[2, 5] = np.nan
    else:
        x = RNG.integers(0 if dtype is np.uint8 else -9, 10, (6, 37)).astype(dtype)
    got = outputs(ex, x)
    wide = np.float32 if dtype is np.float16 else dtype
    with np.errstate(all="ignore"):
        expected = {"sum": x.sum(axis=1, dtype=wide), "prod": x.prod(axis=1, dtype=wide),
                    "max": x.max(axis=1), "min": x.min(axis=1)}
        if np.dtype(dtype).kind == "f":
            expected["mean"] = x.astype(wide).mean(axis=1)
    for op, value in expected.items():
        np.testing.assert_allclose(got[op].astype(np.float64),
                                   value.astype(dtype).astype(np.float64),
                                   rtol=1e-3 if dtype is np.float16 else 1e-5, err_msg=op)


def test_statement_that_folds_to_a_copy() -> None:
    """`max(a, a)` folds to `a`: bufferization then copies, which must become loops (a call
    to the unshipped `memrefCopy` would crash), with strided views too."""
    import tdsl

    mod = tdsl.loads("kernel k(A: f64[M, N]) -> (y: f64[M, N]) {\n"
                     "    y[i, j] = max(A[i, j], A[i, j])\n}\n", target="cpu")
    a = np.random.default_rng(1).uniform(1, 2, (5, 8))
    np.testing.assert_array_equal(mod.k(a), a)
    np.testing.assert_array_equal(mod.k(a[::2, 1::3]), a[::2, 1::3])
