"""End-to-end tests of the CPU backend on hand-built checked kernels, against numpy.

Inputs are random and non-zero; tolerances allow reassociated (vectorized) reductions and
fused multiply-adds, as the language permits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt_kernels as hk  # noqa: E402

from tdsl.runtime.cpu import compile_kernel  # noqa: E402

RNG = np.random.default_rng(1234)
BF16 = np.dtype(ml_dtypes.bfloat16)


def rand(*shape: int, dtype=np.float32, low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """Random values in [low, high) with random signs, never zero."""
    values = RNG.uniform(low, high, size=shape) * RNG.choice([-1.0, 1.0], size=shape)
    return values.astype(dtype)


_CACHE: dict = {}


def compiled(builder, *args):
    """Compile each hand-built kernel once per test session."""
    key = (builder.__name__, args)
    if key not in _CACHE:
        _CACHE[key] = compile_kernel(builder(*args))
    return _CACHE[key]


def test_saxpy_matches_numpy():
    ex = compiled(hk.saxpy)
    x, y = rand(1001), rand(1001)
    z = ex(np.float32(1.5), x, y)
    np.testing.assert_allclose(z, np.float32(1.5) * x + y, rtol=1e-6, atol=1e-6)  # FMA


def test_saxpy_writes_into_given_output_and_python_scalar():
    ex = compiled(hk.saxpy)
    x, y = rand(17), rand(17)
    out = np.full(17, np.nan, dtype=np.float32)
    result = ex(-2.0, x, y, z=out)
    assert result is out
    np.testing.assert_allclose(out, -2.0 * x + y, rtol=1e-6, atol=1e-6)


def test_saxpy_empty_arrays():
    ex = compiled(hk.saxpy)
    z = ex(1.0, np.zeros(0, np.float32), np.zeros(0, np.float32))
    assert z.shape == (0,)


def test_softmax_matches_numpy():
    ex = compiled(hk.softmax)
    x = rand(7, 301, low=0.1, high=30.0)
    y = ex(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=2e-5, atol=1e-7)


def test_softmax_propagates_nan_through_max():
    ex = compiled(hk.softmax)
    x = rand(3, 9)
    x[1, 4] = np.nan
    y = ex(x)
    assert np.isnan(y[1]).all()
    assert np.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (13, 7, 29), (64, 33, 17)])
def test_matmul_matches_numpy(m, k, n):
    ex = compiled(hk.matmul)
    a, b = rand(m, k), rand(k, n)
    np.testing.assert_allclose(ex(a, b), a @ b, rtol=1e-5, atol=1e-5)


def test_matmul_non_contiguous_views_and_strided_output():
    ex = compiled(hk.matmul)
    big_a = rand(40, 30)
    a = big_a[3:33:2, ::3].T  # shape (10, 15), strides in both dimensions, no copy
    b = rand(15, 8)[:, :]
    out_base = np.zeros((10, 24), np.float32)
    out = out_base[:, ::3]
    ex(a, b, C=out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    assert np.all(out_base[:, 1::3] == 0)


def test_matmul_negative_strides_and_aliasing_output():
    ex = compiled(hk.matmul)
    a = rand(6, 6)[::-1]
    b = rand(6, 6)[:, ::-1]
    expected = a @ b
    np.testing.assert_allclose(ex(a, b), expected, rtol=1e-5, atol=1e-5)
    a2 = rand(5, 5)
    b2 = rand(5, 5)
    expected = a2 @ b2
    ex(a2, b2, C=a2)  # the output is also an input: computed aside, then copied
    np.testing.assert_allclose(a2, expected, rtol=1e-5, atol=1e-5)


def test_conv1d_shifted_reads():
    ex = compiled(hk.conv1d)
    x, w = rand(50), rand(5)
    expected = np.array([np.dot(x[i:i + 5], w) for i in range(46)], dtype=np.float32)
    np.testing.assert_allclose(ex(x, w), expected, rtol=1e-5, atol=1e-5)


def test_reversed_read_with_symbol():
    ex = compiled(hk.reverse)
    x = rand(33)
    np.testing.assert_allclose(ex(x), x[::-1] * 2 + np.arange(33, dtype=np.float32),
                               rtol=1e-6)


def test_symbol_and_index_values():
    ex = compiled(hk.symbol_scale)
    x = rand(10)
    np.testing.assert_allclose(ex(x), x * (10 - np.arange(10)).astype(np.float32), rtol=1e-6)


def test_causal_mask_select():
    ex = compiled(hk.causal_mask)
    s = rand(9, 9)
    expected = np.where(np.tril(np.ones((9, 9), bool)), s, -np.inf).astype(np.float32)
    np.testing.assert_array_equal(ex(s), expected)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.int64])
def test_integer_floor_div_and_mod_with_zero_divisors(dtype):
    from tdsl.types import DType  # noqa: E402

    ex = compiled(hk.int_divmod, DType(np.dtype(dtype).name.replace("int", "i")))
    info = np.iinfo(dtype)
    a = RNG.integers(-100, 100, size=64).astype(dtype)
    b = RNG.integers(-7, 8, size=64).astype(dtype)
    b[:8] = 0
    a[8], b[8] = info.min, -1
    a[9], b[9] = info.min, 1
    q, r = ex(a, b)
    with np.errstate(divide="ignore", over="ignore"):
        np.testing.assert_array_equal(q, np.floor_divide(a, b))
        np.testing.assert_array_equal(r, np.remainder(a, b))


def test_f16_saxpy_rounds_each_operation():
    ex = compiled(hk.saxpy, hk.F16)
    x, y = rand(257, dtype=np.float16), rand(257, dtype=np.float16)
    a = np.float16(1.2345)
    np.testing.assert_array_equal(ex(a, x, y), a * x + y)


def test_bf16_softmax():
    ex = compiled(hk.softmax, hk.BF16)
    x = rand(4, 100, dtype=BF16)
    y = ex(x)
    assert y.dtype == BF16
    xf = x.astype(np.float32)
    e = np.exp(xf - xf.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y.astype(np.float32), e / e.sum(axis=1, keepdims=True),
                               rtol=3e-2, atol=1e-3)


def test_bf16_saxpy_rounds_like_ml_dtypes():
    ex = compiled(hk.saxpy, hk.BF16)
    x, y = rand(300, dtype=BF16), rand(300, dtype=BF16)
    a = BF16.type(0.7)
    expected = ((a.astype(np.float32) * x.astype(np.float32)).astype(BF16).astype(np.float32)
                + y.astype(np.float32)).astype(BF16)
    np.testing.assert_array_equal(ex(a, x, y).view(np.uint16), expected.view(np.uint16))


def test_f16_sum_accumulates_in_f32_to_rank0():
    ex = compiled(hk.total_sum, hk.F16)
    x = rand(30, 70, dtype=np.float16, low=0.9, high=1.1)
    x = np.abs(x)
    s = ex(x)
    assert isinstance(s, np.float16)
    assert s == np.float16(x.astype(np.float32).sum())


def test_rank0_output_sum():
    ex = compiled(hk.total_sum)
    x = rand(17, 23)
    s = ex(x)
    np.testing.assert_allclose(s, x.sum(dtype=np.float64), rtol=1e-5)
    out = np.zeros((), np.float32)
    ex(x, s=out)
    np.testing.assert_allclose(out, x.sum(dtype=np.float64), rtol=1e-5)


def test_two_outputs_mean_and_nested_reduction():
    ex = compiled(hk.row_stats)
    x = rand(5, 31)
    mu, c = ex(x)
    np.testing.assert_allclose(mu, x.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, x.max(axis=1) - x.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_mean_of_empty_range_is_nan():
    ex = compiled(hk.row_stats)
    mu, c = ex(np.zeros((3, 0), np.float32))
    assert np.isnan(mu).all() and np.isnan(c).all()


def test_loop_extent_smaller_than_operand():
    ex = compiled(hk.pairwise)
    x = rand(20)
    np.testing.assert_allclose(ex(x), x[:-1] + x[1:], rtol=1e-6)
    assert ex(rand(1)).shape == (0,)


def test_floor_division_subscript():
    ex = compiled(hk.upsample)
    x = rand(7)
    np.testing.assert_array_equal(ex(x), np.repeat(x, 2))


def test_reduction_range_from_shape_symbols():
    ex = compiled(hk.decimate_sum)
    for n in (1, 8, 9):
        x = rand(n)
        np.testing.assert_allclose(ex(x), x[::2].sum(dtype=np.float64), rtol=1e-6)


def test_pure_copy_and_strided_output():
    ex = compiled(hk.copy)
    x = rand(6, 9)[:, ::2]
    out = np.zeros((6, 10), np.float32)[:, ::2]
    ex(x, y=out)
    np.testing.assert_array_equal(out, x)


def test_reduction_nested_in_a_reduction_body():
    ex = compiled(hk.nested_reduction)
    x, w = rand(11, 13), rand(11)
    np.testing.assert_allclose(ex(x, w), (x.max(axis=1) * w).sum(dtype=np.float64), rtol=1e-5)


def test_calls_from_many_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    ex = compiled(hk.softmax)
    xs = [rand(8, 64 + k, low=0.1, high=5.0) for k in range(16)]

    def run(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return np.abs(ex(x) - e / e.sum(axis=1, keepdims=True)).max()

    with ThreadPoolExecutor(8) as pool:
        assert max(pool.map(run, xs * 4)) < 1e-6
