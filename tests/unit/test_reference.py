"""Tests of the reference interpreter against hand-written numpy, on checked kernels built by
hand (no parser or checker involved)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import scipy.special

from tdsl.checked import (
    COMPARE_OPS,
    Binary,
    Cast,
    Const,
    Expr,
    IndexVar,
    Kernel,
    Local,
    Read,
    Reduce,
    Select,
    Statement,
    SymbolVal,
    Unary,
)
from tdsl.runtime import reference
from tdsl.runtime.reference import ReferenceExecutable
from tdsl.runtime.signature import Param, Signature, SymbolSource
from tdsl.types import Affine, DType, TensorType

F16, BF16, F32, F64 = DType.F16, DType.BF16, DType.F32, DType.F64
I8, I32, I64, U8, BOOL = DType.I8, DType.I32, DType.I64, DType.U8, DType.BOOL
BF = ml_dtypes.bfloat16
RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test draws the same values whatever runs before it."""
    global RNG
    RNG = np.random.default_rng(1234)

# ---- builders ------------------------------------------------------------------------------

Dim = int | str | Affine


def aff(x: Dim) -> Affine:
    """An affine form of a literal, a name or a form."""
    return Affine.of(x)


def ty(dtype: DType, *dims: Dim) -> TensorType:
    """A tensor type."""
    return TensorType(dtype, tuple(aff(d) for d in dims))


def kernel(inputs: dict[str, TensorType], outputs: dict[str, TensorType],
           statements: list[Statement], local: dict[str, TensorType] | None = None) -> Kernel:
    """A kernel; every plain-name input dimension binds its symbol (first use wins)."""
    sources, seen = [], set()
    for n, t in enumerate(inputs.values()):
        for d, dim in enumerate(t.shape):
            name = dim.as_name()
            if name is not None and name not in seen:
                seen.add(name)
                sources.append(SymbolSource(name, n, d))
    sig = Signature("k", tuple(Param(n, t) for n, t in inputs.items()),
                    tuple(Param(n, t) for n, t in outputs.items()), tuple(sources))
    locals_ = tuple(Local(n, t) for n, t in (local or {}).items())
    return Kernel(sig, locals_, tuple(statements))


def st(target: str, indices: str, extents: list[Dim], expr: Expr) -> Statement:
    """`target[indices] = expr`."""
    return Statement(target, tuple(indices.split()), tuple(aff(e) for e in extents), expr)


def rd(tensor: str, *subs: Dim, dtype: DType = F32) -> Read:
    """`tensor[subs]`."""
    return Read(tensor, tuple(aff(s) for s in subs), dtype)


def bi(op: str, a: Expr, b: Expr) -> Binary:
    """`a op b` with the result dtype of the op."""
    return Binary(op, a, b, BOOL if op in COMPARE_OPS else a.dtype)


def red(op: str, indices: str, extents: list[Dim], body: Expr) -> Reduce:
    """`op[indices](body)`."""
    return Reduce(op, tuple(indices.split()), tuple(aff(e) for e in extents), body, body.dtype)


def run(k: Kernel, *args: object, **outs: np.ndarray) -> list[np.ndarray]:
    """Bind, allocate, run; the output arrays."""
    call = k.signature.bind(args, outs)
    call.allocate_outputs()
    ReferenceExecutable(k).run(call)
    return call.outputs


def elementwise(op: str, dtype: DType, values: np.ndarray, rdtype: DType | None = None
                ) -> np.ndarray:
    """`y[i] = op(x[i])` (unary op or cast to `rdtype`) on a 1-d array."""
    x = rd("x", "i", dtype=dtype)
    expr = Cast(x, rdtype) if op == "cast" else Unary(op, x, dtype)
    k = kernel({"x": ty(dtype, "N")}, {"y": ty(expr.dtype, "N")}, [st("y", "i", ["N"], expr)])
    return run(k, values)[0]


def binary(op: str, dtype: DType, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`z[i] = a[i] op b[i]` on 1-d arrays."""
    expr = bi(op, rd("a", "i", dtype=dtype), rd("b", "i", dtype=dtype))
    k = kernel({"a": ty(dtype, "N"), "b": ty(dtype, "N")}, {"z": ty(expr.dtype, "N")},
               [st("z", "i", ["N"], expr)])
    return run(k, a, b)[0]


def rand(*shape: int, dtype: type = np.float32) -> np.ndarray:
    """Random non-zero values in [-2, -0.1] u [0.1, 2]."""
    values = RNG.uniform(0.1, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)
    return values.astype(dtype)


def same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Exact equality of values and dtypes (any nan == nan, -0.0 != 0.0)."""
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    assert np.array_equal(a, e, equal_nan=True), (actual, expected)
    signs = np.isnan(e) | (np.signbit(a) == np.signbit(e))
    assert signs.all(), (actual, expected)


# ---- whole kernels -------------------------------------------------------------------------


def test_softmax_with_locals() -> None:
    x = rand(5, 37) * 10
    e_expr = Unary("exp", bi("sub", rd("x", "b", "n"), rd("m", "b")), F32)
    k = kernel({"x": ty(F32, "B", "N")}, {"y": ty(F32, "B", "N")}, [
        st("m", "b", ["B"], red("max", "n", ["N"], rd("x", "b", "n"))),
        st("e", "b n", ["B", "N"], e_expr),
        st("s", "b", ["B"], red("sum", "n", ["N"], rd("e", "b", "n"))),
        st("y", "b n", ["B", "N"], bi("div", rd("e", "b", "n"), rd("s", "b"))),
    ], local={"m": ty(F32, "B"), "e": ty(F32, "B", "N"), "s": ty(F32, "B")})
    (y,) = run(k, x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=2e-6)
    assert y.dtype == np.float32


def matmul(dtype: DType) -> Kernel:
    body = bi("mul", rd("A", "m", "k", dtype=dtype), rd("B", "k", "n", dtype=dtype))
    return kernel({"A": ty(dtype, "M", "K"), "B": ty(dtype, "K", "N")}, {"C": ty(dtype, "M", "N")},
                  [st("C", "m n", ["M", "N"], red("sum", "k", ["K"], body))])


def test_matmul_uses_einsum(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    einsum = np.einsum
    monkeypatch.setattr(np, "einsum", lambda *a, **kw: calls.append(a[0]) or einsum(*a, **kw))
    a, b = rand(7, 33), rand(33, 5)
    (c,) = run(matmul(F32), a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    assert calls == ["ac,cb->ab"]


def test_matmul_f16_accumulates_in_f32() -> None:
    a = np.ones((2, 4096), np.float16)
    b = np.ones((4096, 3), np.float16)
    (c,) = run(matmul(F16), a, b)
    same(c, np.full((2, 3), 4096, np.float16))  # f16 accumulation would stall at 2048
    a, b = rand(6, 40, dtype=np.float16), rand(40, 4, dtype=np.float16)
    (c,) = run(matmul(F16), a, b)
    exact = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float16)
    np.testing.assert_allclose(c.astype(np.float64), exact.astype(np.float64), rtol=2e-3,
                               atol=1e-3)


def test_generic_f16_sum_accumulates_in_f32() -> None:
    body = Unary("abs", rd("x", "k", dtype=F16), F16)
    k = kernel({"x": ty(F16, "K")}, {"y": ty(F16)}, [st("y", "", [], red("sum", "k", ["K"], body))])
    (y,) = run(k, np.ones(4096, np.float16))
    same(y, np.float16(4096))


def test_matmul_int8_wraps_like_generic_path() -> None:
    a = RNG.integers(-128, 128, (4, 50)).astype(np.int8)
    b = RNG.integers(-128, 128, (50, 3)).astype(np.int8)
    (c,) = run(matmul(I8), a, b)
    same(c, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int8))
    generic = Reduce("sum", ("k",), (aff("K"),), bi(
        "mul", bi("add", rd("A", "m", "k", dtype=I8), Const(0, I8)), rd("B", "k", "n", dtype=I8)),
        I8)
    k = kernel({"A": ty(I8, "M", "K"), "B": ty(I8, "K", "N")}, {"C": ty(I8, "M", "N")},
               [st("C", "m n", ["M", "N"], generic)])
    same(run(k, a, b)[0], c)


def test_conv_like_affine_subscripts() -> None:
    x, w = rand(20), rand(4)
    body = bi("mul", rd("x", aff("i") + "r"), rd("w", "r"))
    out_n = aff("N") - "R" + 1
    k = kernel({"x": ty(F32, "N"), "w": ty(F32, "R")}, {"y": ty(F32, out_n)},
               [st("y", "i", [out_n], red("sum", "r", ["R"], body))])
    (y,) = run(k, x, w)
    expected = np.array([np.dot(x[i:i + 4].astype(np.float64), w) for i in range(17)])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_strided_and_floordiv_subscripts() -> None:
    x = rand(11)
    half = (aff("N") + 1).floordiv(2)
    k = kernel({"x": ty(F32, "N")}, {"y": ty(F32, half), "z": ty(F32, aff("N").scale(2))}, [
        st("y", "i", [half], rd("x", aff("i").scale(2))),
        st("z", "j", [aff("N").scale(2)], rd("x", aff("j").floordiv(2))),
    ])
    y, z = run(k, x)
    same(y, x[::2])
    same(z, np.repeat(x, 2))


def test_floordiv_subscript_of_negative_values_floors() -> None:
    x = rand(6)
    sub = (aff("j") - 1).floordiv(2) + 1  # j = 0 reads x[-1 // 2 + 1] = x[0]
    even = aff("j").floordiv(2).scale(2)
    k = kernel({"x": ty(F32, "N")}, {"z": ty(F32, aff("N").scale(2) - 1), "w": ty(F32, "N")}, [
        st("z", "j", [aff("N").scale(2) - 1], rd("x", sub)),
        st("w", "j", ["N"], rd("x", even)),
    ])
    z, w = run(k, x)
    same(z, x[(np.arange(11) - 1) // 2 + 1])
    same(w, x[[0, 0, 2, 2, 4, 4]])


def test_einsum_scalar_factor_diagonal_and_nested() -> None:
    a, d, x = np.float32(1.5), rand(5, 5), rand(3, 5)
    body = bi("mul", bi("mul", rd("a"), rd("d", "k", "k")), rd("x", "i", "k"))
    k = kernel({"a": ty(F32), "d": ty(F32, "K", "K"), "x": ty(F32, "I", "K")},
               {"y": ty(F32, "I")}, [st("y", "i", ["I"], red("sum", "k", ["K"], body))])
    np.testing.assert_allclose(run(k, a, d, x)[0], a * (x.astype(np.float64) @ np.diag(d)),
                               rtol=1e-5, atol=1e-5)
    x3, w = rand(2, 4, 6), rand(6)
    inner = red("sum", "k", ["K"], bi("mul", rd("x", "i", "j", "k"), rd("w", "k")))
    k = kernel({"x": ty(F32, "I", "J", "K"), "w": ty(F32, "K")}, {"y": ty(F32, "I")},
               [st("y", "i", ["I"], red("max", "j", ["J"], inner))])
    np.testing.assert_allclose(run(k, x3, w)[0], (x3.astype(np.float64) @ w).max(axis=1),
                               rtol=1e-5, atol=1e-5)


def test_causal_mask_select() -> None:
    x = rand(6, 6)
    expr = Select(bi("le", IndexVar("j"), IndexVar("i")), rd("s", "i", "j"), Const(-math.inf, F32),
                  F32)
    k = kernel({"s": ty(F32, "N", "N")}, {"y": ty(F32, "N", "N")}, [st("y", "i j", ["N", "N"], expr)])
    (y,) = run(k, x)
    same(y, np.where(np.tril(np.ones((6, 6), bool)), x, np.float32(-np.inf)))


def test_index_and_symbol_values() -> None:
    expr = bi("add", Cast(IndexVar("i"), F32), Cast(SymbolVal(aff("N").scale(10) - 1), F32))
    k = kernel({"x": ty(F32, "N")}, {"y": ty(F32, "N")}, [st("y", "i", ["N"], expr)])
    same(run(k, rand(4))[0], np.array([39, 40, 41, 42], np.float32))


# ---- unary ---------------------------------------------------------------------------------

EDGES = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 3.0, 1e-30, -88.0, 100.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, fn", [
    ("neg", np.negative), ("abs", np.abs), ("exp", np.exp), ("log", np.log), ("sqrt", np.sqrt),
    ("sin", np.sin), ("cos", np.cos), ("tanh", np.tanh), ("floor", np.floor), ("ceil", np.ceil),
    ("erf", scipy.special.erf), ("rsqrt", lambda v: 1 / np.sqrt(v)),
])
def test_unary_matches_numpy(op: str, fn: object, dtype: type) -> None:
    x = np.concatenate([np.array(EDGES), rand(20, dtype=np.float64) * 5]).astype(dtype)
    with np.errstate(all="ignore"):
        expected = np.asarray(fn(x)).astype(dtype)  # type: ignore[operator]
    same(elementwise(op, F32 if dtype == np.float32 else F64, x), expected)


def test_unary_edge_values() -> None:
    x = np.array([np.nan, -0.0, 0.0, -1.0, np.inf, -np.inf, 2.0], np.float32)
    same(elementwise("relu", F32, x), np.array([np.nan, 0, 0, 0, np.inf, 0, 2], np.float32))
    same(elementwise("rsqrt", F32, x),
         np.array([np.nan, -np.inf, np.inf, np.nan, 0, np.nan, 2 ** -0.5], np.float32))
    same(elementwise("abs", F32, x), np.array([np.nan, 0, 0, 1, np.inf, np.inf, 2], np.float32))
    same(elementwise("floor", F32, np.array([-0.5, -0.0, 0.5], np.float32)),
         np.array([-1.0, -0.0, 0.0], np.float32))
    same(elementwise("ceil", F32, np.array([-0.5, 0.5], np.float32)),
         np.array([-0.0, 1.0], np.float32))
    same(elementwise("log", F32, np.array([0.0, -0.0, -1.0], np.float32)),
         np.array([-np.inf, -np.inf, np.nan], np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable(dtype: type) -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -1000.0, 1000.0, -30.0, 3.0, -3.0], dtype)
    with np.errstate(all="raise"):  # the reference suppresses nothing it would need to
        y = elementwise("sigmoid", F32 if dtype == np.float32 else F64, x)
    assert np.isnan(y[0]) and y[1] == 1 and y[2] == 0 and y[3] == 0.5
    assert y[4] == 0 and y[5] == 1
    np.testing.assert_allclose(y[6:], 1 / (1 + np.exp(-x[6:].astype(np.float64))), rtol=1e-6)
    assert y.dtype == dtype
    with np.errstate(over="raise", invalid="raise"):  # no overflow where 1/(1+exp(-x)) has
        same(reference._sigmoid(np.array([-1e4, 1e4], dtype)), np.array([0, 1], dtype))


def test_f16_and_bf16_unary_compute_in_f32() -> None:
    x = rand(50, dtype=np.float16)
    same(elementwise("exp", F16, x), np.exp(x.astype(np.float32)).astype(np.float16))
    same(elementwise("sigmoid", F16, np.array([-np.inf, np.inf], np.float16)),
         np.array([0, 1], np.float16))
    xb = rand(50).astype(BF)
    same(elementwise("tanh", BF16, xb), np.tanh(xb.astype(np.float32)).astype(BF))


def test_integer_unary_and_not() -> None:
    x = np.array([-128, -5, 0, 7, 127], np.int8)
    same(elementwise("neg", I8, x), np.array([-128, 5, 0, -7, -127], np.int8))
    same(elementwise("abs", I8, x), np.array([-128, 5, 0, 7, 127], np.int8))
    same(elementwise("relu", I8, x), np.array([0, 0, 0, 7, 127], np.int8))
    same(elementwise("floor", I8, x), x)
    same(elementwise("not", BOOL, np.array([True, False])), np.array([False, True]))
    with pytest.raises(TypeError):
        elementwise("exp", I32, np.array([1], np.int32))


# ---- binary --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_signed_floor_div_and_mod(dtype: type) -> None:
    low = np.iinfo(dtype).min
    a = np.array([7, -7, 7, -7, 5, -5, 0, low, low, 3], dtype)
    b = np.array([2, 2, -2, -2, 0, 0, 0, -1, 1, -4], dtype)
    same(binary("div", DType(np.dtype(dtype).name.replace("int", "i")), a, b),
         np.array([3, -4, -4, 3, 0, 0, 0, low, low, -1], dtype))
    same(binary("mod", DType(np.dtype(dtype).name.replace("int", "i")), a, b),
         np.array([1, 1, -1, -1, 0, 0, 0, 0, 0, -1], dtype))


def test_unsigned_div_mod_and_wrapping() -> None:
    a, b = np.array([200, 7, 255, 0], np.uint8), np.array([0, 3, 16, 1], np.uint8)
    same(binary("div", U8, a, b), np.array([0, 2, 15, 0], np.uint8))
    same(binary("mod", U8, a, b), np.array([0, 1, 15, 0], np.uint8))
    same(binary("sub", U8, np.array([0, 1], np.uint8), np.array([1, 3], np.uint8)),
         np.array([255, 254], np.uint8))
    same(binary("add", I8, np.array([100, -100], np.int8), np.array([100, -100], np.int8)),
         np.array([-56, 56], np.int8))
    big = np.array([2**31 - 1, 65536], np.int32)
    same(binary("add", I32, big, np.array([1, 0], np.int32)), np.array([-2**31, 65536], np.int32))
    same(binary("mul", I32, big, big), np.array([1, 0], np.int32))
    same(binary("pow", I32, np.array([3, -2, 65536], np.int32), np.array([4, 3, 2], np.int32)),
         np.array([81, -8, 0], np.int32))


def test_float_div_mod_pow_min_max() -> None:
    a = np.array([1.0, -1.0, 0.0, 5.5, -5.5, np.nan, 2.0, 1.0], np.float32)
    b = np.array([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, np.nan, -0.0], np.float32)
    with np.errstate(all="ignore"):
        same(binary("div", F32, a, b), a / b)
        same(binary("mod", F32, a, b), np.mod(a, b))
        same(binary("pow", F32, a, b), np.power(a, b))
    same(binary("max", F32, a, b), np.array([1, 0, 0, 5.5, 2, np.nan, np.nan, 1], np.float32))
    same(binary("min", F32, a, b), np.array([0, -1, 0, 2, -5.5, np.nan, np.nan, -0.0], np.float32))


def test_comparisons_and_logic() -> None:
    a = np.array([1.0, np.nan, 2.0, -0.0], np.float32)
    b = np.array([2.0, np.nan, 2.0, 0.0], np.float32)
    for op, fn in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                   ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)]:
        same(binary(op, F32, a, b), fn(a, b))
    p, q = np.array([True, True, False, False]), np.array([True, False, True, False])
    same(binary("and", BOOL, p, q), p & q)
    same(binary("or", BOOL, p, q), p | q)


def test_f16_and_bf16_round_after_each_op() -> None:
    one = np.array([1.0, 1.0, 1.0], BF)
    small = np.array([2**-8, 3 * 2**-8, 2**-9], BF)
    same(binary("add", BF16, one, small), np.array([1.0, 1 + 2**-6, 1.0], BF))
    a, b = rand(40, dtype=np.float16), rand(40, dtype=np.float16)
    same(binary("mul", F16, a, b), (a.astype(np.float32) * b.astype(np.float32)).astype(np.float16))
    big = np.array([60000.0], np.float16)
    same(binary("add", F16, big, big), np.array([np.inf], np.float16))
    # (a + b) + c rounds after each op: 1 + 2**-11 is a tie that rounds to 1 in f16.
    x = rd("x", "i", dtype=F16)
    expr = bi("add", bi("add", x, Const(2**-11, F16)), Const(2**-11, F16))
    k = kernel({"x": ty(F16, "N")}, {"y": ty(F16, "N")}, [st("y", "i", ["N"], expr)])
    same(run(k, np.ones(2, np.float16))[0], np.ones(2, np.float16))
    # A bf16 literal rounds once from its f64 value (not through f32).
    k = kernel({"x": ty(BF16, "N")}, {"y": ty(BF16, "N")},
               [st("y", "i", ["N"], Const(1 + 2**-8 + 2**-30, BF16))])
    same(run(k, one)[0], np.full(3, 1 + 2**-7, BF))


# ---- casts ---------------------------------------------------------------------------------


def test_saturating_float_to_int_casts() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 2147483520.0, 2147483648.0,
                  -2147483648.0, -2147483904.0, 1.9, -1.9, -0.0], np.float32)
    same(elementwise("cast", F32, x, I32), np.array(
        [0, 2**31 - 1, -2**31, 2**31 - 1, -2**31, 2147483520, 2**31 - 1, -2**31, -2**31, 1, -1, 0],
        np.int32))
    x = np.array([2147483647.0, 2147483647.9, 2147483648.0, -2147483648.9, -2147483649.0],
                 np.float64)
    same(elementwise("cast", F64, x, I32),
         np.array([2**31 - 1, 2**31 - 1, 2**31 - 1, -2**31, -2**31], np.int32))
    x = np.array([1e30, -1e30, float(2**63), -float(2**63), 2.0**63 - 1024, np.nan, 1e18])
    same(elementwise("cast", F64, x, I64), np.array(
        [2**63 - 1, -2**63, 2**63 - 1, -2**63, 2**63 - 1024, 0, 10**18], np.int64))
    x = np.array([-1.0, 255.5, 256.0, np.nan, 0.99, -0.99], np.float32)
    same(elementwise("cast", F32, x, U8), np.array([0, 255, 255, 0, 0, 0], np.uint8))
    same(elementwise("cast", F16, np.array([300.0, -300.0, 65504.0], np.float16), I8),
         np.array([127, -128, 127], np.int8))


def test_bool_int_and_float_casts() -> None:
    x = np.array([np.nan, -0.0, 0.0, 0.5, -np.inf], np.float32)
    same(elementwise("cast", F32, x, BOOL), np.array([True, False, False, True, True]))
    same(elementwise("cast", BOOL, np.array([True, False]), F32), np.array([1.0, 0.0], np.float32))
    same(elementwise("cast", BOOL, np.array([True, False]), BF16), np.array([1.0, 0.0], BF))
    same(elementwise("cast", BOOL, np.array([True, False]), U8), np.array([1, 0], np.uint8))
    same(elementwise("cast", I32, np.array([300, -129, 255], np.int32), I8),
         np.array([44, 127, -1], np.int8))
    same(elementwise("cast", I32, np.array([-1, 256], np.int32), U8), np.array([255, 0], np.uint8))
    same(elementwise("cast", I64, np.array([2**24 + 1, 2**24 + 3, -(2**24) - 1]), F32),
         np.array([2**24, 2**24 + 4, -(2**24)], np.float32))
    same(elementwise("cast", F32, np.array([70000.0, -1e10, 1e-8], np.float32), F16),
         np.array([np.inf, -np.inf, 0.0], np.float16))
    same(elementwise("cast", I32, np.array([65519, 65520, 2049], np.int32), F16),
         np.array([65504, np.inf, 2048], np.float16))


def test_casts_round_once_to_bf16() -> None:
    # 1 + 2**-8 + 2**-30 is above the bf16 midpoint but rounds to it in f32 first.
    x = np.array([1 + 2**-8 + 2**-30, 1 + 2**-8, 1 + 3 * 2**-8, np.nan, -np.inf, 1e39])
    same(elementwise("cast", F64, x, BF16),
         np.array([1 + 2**-7, 1.0, 1 + 2**-6, np.nan, -np.inf, np.inf], BF))
    big = np.array([2**60 + 2**52 + 1, 2**60 + 2**52, -(2**60) - 2**52 - 1, 2**63 - 1, 257])
    same(elementwise("cast", I64, big, BF16),
         np.array([2.0**60 + 2**53, 2.0**60, -(2.0**60) - 2**53, 2.0**63, 256], BF))
    same(elementwise("cast", F64, np.array([1 + 2**-11 + 2**-40]), F16),
         np.array([1 + 2**-10], np.float16))
    same(elementwise("cast", BF16, np.array([1 + 2**-7, 70000.0], BF), F16),
         np.array([1 + 2**-7, np.inf], np.float16))


# ---- reductions ----------------------------------------------------------------------------


def reduce_kernel(op: str, dtype: DType, body_op: str | None = None) -> Kernel:
    body: Expr = rd("x", "b", "n", dtype=dtype)
    if body_op:
        body = Unary(body_op, body, dtype)
    return kernel({"x": ty(dtype, "B", "N")}, {"y": ty(dtype, "B")},
                  [st("y", "b", ["B"], red(op, "n", ["N"], body))])


@pytest.mark.parametrize("op, expected", [
    ("sum", 0.0), ("prod", 1.0), ("max", -np.inf), ("min", np.inf), ("mean", np.nan)])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_empty_float_reductions(op: str, expected: float, dtype: DType) -> None:
    np_dtype = np.float32 if dtype is F32 else np.float16
    for body_op in (None, "abs"):  # the einsum path and the generic path
        (y,) = run(reduce_kernel(op, dtype, body_op), np.zeros((3, 0), np_dtype))
        same(y, np.full(3, expected, np_dtype))


@pytest.mark.parametrize("op, expected", [
    ("sum", 0), ("prod", 1), ("max", -2**31), ("min", 2**31 - 1)])
def test_empty_integer_reductions(op: str, expected: int) -> None:
    (y,) = run(reduce_kernel(op, I32), np.zeros((2, 0), np.int32))
    same(y, np.full(2, expected, np.int32))


def test_empty_outputs() -> None:
    (y,) = run(reduce_kernel("sum", F32, "abs"), np.zeros((0, 4), np.float32))
    assert y.shape == (0,)
    k = kernel({"x": ty(F32, "M", "N")}, {"y": ty(F32, "N", "M")},
               [st("y", "j i", ["N", "M"], rd("x", "i", "j"))])
    assert run(k, np.zeros((0, 3), np.float32))[0].shape == (3, 0)


def test_reductions_match_numpy() -> None:
    x = rand(4, 9)
    x[1, 3] = np.nan
    for op, fn in [("sum", np.sum), ("prod", np.prod), ("max", np.max), ("min", np.min),
                   ("mean", np.mean)]:
        (y,) = run(reduce_kernel(op, F32, "neg"), x)
        np.testing.assert_allclose(y, fn(-x.astype(np.float64), axis=1), rtol=1e-5, atol=1e-5)
        assert np.isnan(y[1]) and y.dtype == np.float32
    xi = RNG.integers(-100, 100, (3, 40)).astype(np.int8)
    same(run(reduce_kernel("prod", I8), xi)[0], np.prod(xi, axis=1, dtype=np.int8))
    same(run(reduce_kernel("sum", I8, "neg"), xi)[0], np.sum(-xi, axis=1, dtype=np.int8))
    same(run(reduce_kernel("max", I8), xi)[0], xi.max(axis=1))


def test_mean_f16_and_integer_mean_rejected() -> None:
    x = rand(3, 100, dtype=np.float16)
    (y,) = run(reduce_kernel("mean", F16), x)
    same(y, (x.astype(np.float32).sum(axis=1) / np.float32(100)).astype(np.float16))
    with pytest.raises(TypeError):
        run(reduce_kernel("mean", I32), np.ones((2, 2), np.int32))


def test_nested_reductions() -> None:
    x, w = rand(3, 4, 5), rand(4)
    inner = red("max", "k", ["K"], rd("x", "i", "j", "k"))
    body = bi("mul", inner, rd("w", "j"))
    k = kernel({"x": ty(F32, "I", "J", "K"), "w": ty(F32, "J")}, {"y": ty(F32, "I")},
               [st("y", "i", ["I"], red("sum", "j", ["J"], body))])
    (y,) = run(k, x, w)
    np.testing.assert_allclose(y, (x.max(axis=2).astype(np.float64) * w).sum(axis=1), rtol=1e-6, atol=1e-5)


def test_reduction_over_index_it_does_not_read() -> None:
    x = rand(3)
    body = bi("add", rd("x", "i"), Cast(IndexVar("i"), F32))
    k = kernel({"x": ty(F32, "N"), "r": ty(F32, "R")}, {"y": ty(F32, "N"), "z": ty(F32)}, [
        st("y", "i", ["N"], red("sum", "r", ["R"], rd("x", "i"))),
        st("z", "", [], red("sum", "i", ["N"], body)),
    ])
    y, z = run(k, x, rand(5))
    np.testing.assert_allclose(y, 5 * x, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(z, x.sum() + 3, rtol=1e-6, atol=1e-5)


def test_chunked_generic_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = rand(13, 8), rand(8, 6)
    body = bi("mul", bi("add", rd("x", "i", "k"), Cast(IndexVar("i"), F32)), rd("w", "k", "j"))
    k = kernel({"x": ty(F32, "M", "K"), "w": ty(F32, "K", "N")}, {"y": ty(F32, "M", "N")},
               [st("y", "i j", ["M", "N"], red("sum", "k", ["K"], body))])
    expected = (x.astype(np.float64) + np.arange(13)[:, None]) @ w
    whole = run(k, x, w)[0]
    seen = []
    original = reference._Evaluator.eval

    def spy(self: object, e: Expr, dom: reference._Domain) -> np.ndarray:
        if e is body:
            seen.append(dom.axes[0].start)
        return original(self, e, dom)  # type: ignore[arg-type]

    monkeypatch.setattr(reference._Evaluator, "eval", spy)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 100)  # 2 rows of 6 x 8 per chunk
    chunked = run(k, x, w)[0]
    assert seen == list(range(0, 13, 2))
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-4)
    same(chunked, whole)


# ---- outputs, locals, rank 0 and bounds ----------------------------------------------------


def test_multi_output_locals_and_strided_output() -> None:
    x = rand(4, 6)
    k = kernel({"x": ty(F32, "B", "N")}, {"y": ty(F32, "B", "N"), "s": ty(F32, "B")}, [
        st("t", "b n", ["B", "N"], bi("mul", rd("x", "b", "n"), Const(2, F32))),
        st("s", "b", ["B"], red("sum", "n", ["N"], rd("t", "b", "n"))),
        st("y", "b n", ["B", "N"], bi("sub", rd("t", "b", "n"), rd("s", "b"))),
    ], local={"t": ty(F32, "B", "N")})
    buf = np.full((4, 12), 7.0, np.float32)
    y, s = run(k, x, y=buf[:, ::2])
    assert y.base is buf
    np.testing.assert_allclose(s, 2 * x.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(buf[:, ::2], 2 * x - s[:, None], rtol=1e-5, atol=1e-5)
    assert (buf[:, 1::2] == 7).all()


def test_output_aliasing_input_reads_original_values() -> None:
    x = rand(5)
    k = kernel({"x": ty(F32, "N")}, {"y": ty(F32, "N")},
               [st("y", "i", ["N"], rd("x", aff("N") - 1 - "i"))])
    expected = x[::-1].copy()
    run(k, x, y=x)
    same(x, expected)


def test_rank0_scalar_input_let_and_output() -> None:
    k = kernel({"a": TensorType(F32, (), scalar=True), "x": ty(F32, "N")}, {"y": ty(F32)}, [
        st("c", "", [], red("sum", "i", ["N"], rd("x", "i"))),
        st("y", "", [], bi("mul", rd("c"), rd("a"))),
    ], local={"c": ty(F32)})
    x = rand(10)
    (y,) = run(k, 3.0, x)
    assert y.shape == ()
    np.testing.assert_allclose(y, 3 * x.sum(), rtol=1e-6, atol=1e-5)
    out = np.zeros((), np.float32)
    run(k, np.float32(-1.0), x, y=out)
    np.testing.assert_allclose(out, -x.sum(), rtol=1e-6, atol=1e-5)


def test_broadcast_constant_statement_and_constant_subscript() -> None:
    k = kernel({"x": ty(F32, "N")}, {"y": ty(F32, "N", 3)},
               [st("y", "i j", ["N", 3], bi("add", rd("x", 0), Const(1, F32)))])
    x = rand(4)
    same(run(k, x)[0], np.full((4, 3), x[0] + 1, np.float32))


def test_out_of_bounds_read_is_reported() -> None:
    k = kernel({"x": ty(F32, "N")}, {"y": ty(F32, "N")}, [st("y", "i", ["N"], rd("x", aff("i") + 1))])
    y = np.full(3, 5.0, np.float32)
    with pytest.raises(IndexError, match="outside"):
        run(k, rand(3), y=y)
    assert (y == 5).all()  # nothing written


def test_inconsistent_dtypes_are_reported() -> None:
    expr = Binary("add", rd("x", "i"), rd("x", "i"), F64)
    k = kernel({"x": ty(F32, "N")}, {"y": ty(F64, "N")}, [st("y", "i", ["N"], expr)])
    with pytest.raises(TypeError, match="inconsistent"):
        run(k, rand(3))
