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


ABSORBING_REDUCTIONS = """
kernel min_zero(x: u8[N], w: u8[M]) -> (y: u8[N]) { y[i] = min[p: M](u8(0)) }
kernel prod_zero(x: i32[N], w: u8[M]) -> (y: i32[N]) { y[i] = prod[p: M](x[i] * 0) }
kernel max_top(x: i16[N], w: u8[M]) -> (y: i16[N]) { y[i] = max[p: M](i16(32767)) }
kernel min_bottom(x: i16[N], w: u8[M]) -> (y: i16[N]) { y[i] = min[p: M](i16(-32768)) }
kernel nested(x: u8[N], w: u8[M]) -> (y: u8[N]) { y[i] = sum[k: 1](min[p: M](x[i] - x[i])) }
kernel plain(x: i32[N], w: i32[M]) -> (y: i32[N]) { y[i] = min[p: M](w[p] + x[i]) }
"""


@pytest.mark.parametrize("extent", [0, 1, 3])
@pytest.mark.parametrize("name", ["min_zero", "prod_zero", "max_top", "min_bottom", "nested",
                                  "plain"])
def test_integer_reduction_whose_body_folds_keeps_its_identity(name, extent):
    """`minui(acc, 0)` folds to 0 and drops the accumulator's fill: an empty domain must still
    give the identity (corpus 007-009)."""
    import tdsl
    from tdsl.runtime.signature import numpy_dtype

    cpu = tdsl.loads(ABSORBING_REDUCTIONS, filename="absorbing.tdsl")
    ref = tdsl.loads(ABSORBING_REDUCTIONS, target="reference", filename="absorbing.tdsl")
    kernel = getattr(cpu, name)
    x_param, w_param = kernel.signature.inputs
    x = RNG.integers(1, 100, size=5).astype(numpy_dtype(x_param.type.dtype))
    w = RNG.integers(1, 100, size=extent).astype(numpy_dtype(w_param.type.dtype))
    out = np.full(5, 77, dtype=numpy_dtype(kernel.signature.outputs[0].type.dtype))
    kernel(x, w, y=out)
    np.testing.assert_array_equal(out, getattr(ref, name)(x, w))


NARROWING = """
kernel f64_f16(x: f64[N]) -> (y: f16[N]) { y = f16(x) }
kernel f64_bf16(x: f64[N]) -> (y: bf16[N]) { y = bf16(x) }
kernel i64_bf16(x: i64[N]) -> (y: bf16[N]) { y = bf16(x) }
kernel i32_bf16(x: i32[N]) -> (y: bf16[N]) { y = bf16(x) }
kernel bf16_copy(x: bf16[N]) -> (y: bf16[N]) { y[i] = x[0] }
"""


def _near_midpoints(bits: int, wide_bits: int, count: int) -> np.ndarray:
    """Floats of `wide_bits` mantissa bits a few ulps around the rounding midpoints of a
    `bits`-bit mantissa (where rounding twice goes wrong), over many exponents."""
    mant = RNG.integers(0, 1 << bits, size=count)
    exps = RNG.integers(-30, 30, size=count)
    mid = (1 + (2 * mant + 1) / (1 << (bits + 1))) * np.exp2(exps.astype(np.float64))
    nudge = RNG.integers(-3, 4, size=count) * np.exp2(exps - wide_bits + 0.0)
    values = (mid + nudge) * RNG.choice([-1.0, 1.0], size=count)
    return values


def _bf16_exact(value: float) -> int:
    """The bits of `value` (an int or float) rounded once to bf16, nearest even, by brute
    force over the neighbours of its f32 rounding (ml_dtypes rounds f64 -> bf16 twice)."""
    from fractions import Fraction

    f = Fraction(value)
    start = int(np.array([float(value)], np.float32).astype(BF16).view(np.uint16)[0])
    best = None
    for bits in range(max(start - 2, 0), min(start + 3, 0x10000)):
        c = np.array([bits], np.uint16).view(BF16)[0]
        if not np.isfinite(float(c)):
            continue
        key = (abs(Fraction(float(c)) - f), bits & 1)
        best = min(best or (key, bits), (key, bits))
    return best[1]


def test_narrowing_casts_round_once():
    """f64 -> f16/bf16 and i64/i32 -> bf16 round once (round-to-odd through f32), like numpy
    for f16; bf16 loads and stores never call libgcc (corpus 001-006)."""
    import tdsl

    cpu = tdsl.loads(NARROWING, filename="narrowing.tdsl")
    ref = tdsl.loads(NARROWING, target="reference", filename="narrowing.tdsl")
    x = np.concatenate([_near_midpoints(10, 52, 20000), _near_midpoints(7, 52, 20000),
                        [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e300, -1e300, 5e-324, 65520.0,
                         65519.99, 3.4e38, 3.5e38, 1e-40, -1e-45]])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(cpu.f64_f16(x).view(np.uint16),
                                      x.astype(np.float16).view(np.uint16))
    got = cpu.f64_bf16(x).view(np.uint16)
    np.testing.assert_array_equal(got, ref.f64_bf16(x).view(np.uint16))
    for k in range(20000, 20300):
        assert got[k] == _bf16_exact(float(x[k])), x[k]
    # i64 around bf16 midpoints: (1.mmmmmmm1 << shift) + a few, beyond f64's precision.
    shift = RNG.integers(10, 55, size=20000)
    mant = (1 << 8) | RNG.integers(0, 1 << 7, size=20000) << 1 | 1
    sign = RNG.choice([-1, 1], size=20000)
    big = np.array([int(s) * ((int(m) << int(k)) + int(n)) for s, m, k, n in
                    zip(sign, mant, shift, RNG.integers(-3, 4, size=20000))], dtype=np.int64)
    big = np.concatenate([big, RNG.integers(-(2 ** 63), 2 ** 63 - 1, size=5000, dtype=np.int64),
                          [2 ** 63 - 1, -(2 ** 63), 0, 1, -1, 2 ** 62 + 2 ** 54 + 4]])
    got = cpu.i64_bf16(big).view(np.uint16)
    np.testing.assert_array_equal(got, ref.i64_bf16(big).view(np.uint16))
    for k in list(range(300)) + list(range(len(big) - 6, len(big))):
        assert got[k] == _bf16_exact(int(big[k])), big[k]
    small = RNG.integers(-(2 ** 31), 2 ** 31 - 1, size=20000, dtype=np.int64).astype(np.int32)
    np.testing.assert_array_equal(cpu.i32_bf16(small).view(np.uint16),
                                  ref.i32_bf16(small).view(np.uint16))
    b = RNG.standard_normal(33).astype(BF16)
    np.testing.assert_array_equal(cpu.bf16_copy(b).view(np.uint16),
                                  np.full(33, b[0]).view(np.uint16))
