"""Streaming stores (`tdsl.stream_stores`) against the reference: the vectorized pass with its
aligned non-temporal stores is taken when the output is large, the innermost strides are 1
and the output is element-aligned; otherwise the original loop runs. With `min_bytes`
and `MIN_PASS_BYTES` patched to 0 every call takes the streaming pass, so small arrays reach
it: rows whose first
aligned element falls anywhere (outputs that are column slices of a wider array), rows
shorter than a vector, and strided views (the original loop)."""

from __future__ import annotations

import numpy as np
import pytest

import tdsl
import tdsl.stream_stores
from tdsl.check import check_source
from tdsl.pipelines import run_pipeline
from tdsl.runtime.cpu import compile_kernel

SOURCE = """
kernel softmax(x: {t}[B, N]) -> (y: {t}[B, N]) {{
    m[b]    = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    y[b, n] = e[b, n] / sum[j](e[b, j])
}}
kernel layernorm(x: {t}[B, N], gamma: {t}[N], beta: {t}[N]) -> (y: {t}[B, N]) {{
    mu[b]   = mean[n](x[b, n])
    d[b, n] = x[b, n] - mu[b]
    v[b]    = mean[n](d[b, n] * d[b, n])
    y[b, n] = d[b, n] * rsqrt(v[b] + 1e-5) * gamma[n] + beta[n]
}}
kernel chain(x: {t}[B, N], z: {t}[B, N]) -> (y: {t}[B, N]) {{
    t[b, n] = max(x[b, n] * z[b, n] + 0.5 * x[b, n] - z[b, n] * z[b, n], 0.0)
    y[b, n] = t[b, n] / (1.0 + abs(x[b, n])) + sqrt(abs(z[b, n]))
}}
"""
INTS = """
kernel affine(x: i32[B, N], k: i32) -> (y: i32[B, N]) {
    y[b, n] = x[b, n] * k + x[b, n] / 4 - abs(x[b, n])
}
"""
TOL = {"f32": 2e-5, "f64": 1e-12}
RNG = np.random.default_rng(11)


def _compiled(source: str, streaming: bool, monkeypatch) -> dict:
    if streaming:
        monkeypatch.setattr(tdsl.stream_stores, "min_bytes", lambda: 0)
        monkeypatch.setattr(tdsl.stream_stores, "MIN_PASS_BYTES", 0)
    program = check_source(source, "<stream>")
    return {k.name: compile_kernel(k) for k in program.kernels}


def _args(name: str, b: int, n: int, dtype) -> list:
    x = RNG.uniform(-3, 3, (b, n)).astype(dtype)
    if name == "layernorm":
        return [x, RNG.uniform(0.5, 1.5, n).astype(dtype), RNG.uniform(-1, 1, n).astype(dtype)]
    if name == "chain":
        return [x, RNG.uniform(-3, 3, (b, n)).astype(dtype)]
    return [x]


def _sliced_output(b: int, n: int, shift: int, dtype) -> np.ndarray:
    """An output whose rows start `shift` elements into rows of a wider array."""
    wide = np.full((b, n + 13), np.nan, dtype=dtype)
    return wide[:, shift:shift + n]


@pytest.mark.parametrize("source", [SOURCE.format(t="f32"), SOURCE.format(t="f64"), INTS],
                         ids=["f32", "f64", "i32"])
def test_the_pass_is_vectorized_with_streaming_stores_behind_a_test(source):
    for kernel in check_source(source, "<stream>").kernels:
        loops = run_pipeline(kernel, until="loops", keep=["loops"]).ir["loops"]
        assert loops.count("nontemporal = true") == 1, kernel.name
        assert "llvm.fence seq_cst" in loops
        assert "vector.load" in loops and "memref.reinterpret_cast" in loops
        assert any(f"alignment = {b} : i64, nontemporal" in loops for b in (16, 32, 64))


@pytest.mark.parametrize("t", ["f32", "f64"])
def test_streamed_rows_against_the_reference(t, monkeypatch):
    dtype = np.float32 if t == "f32" else np.float64
    cpu = _compiled(SOURCE.format(t=t), True, monkeypatch)
    ref = tdsl.loads(SOURCE.format(t=t), target="reference")
    for name, kernel in cpu.items():
        for b, n in [(1, 1), (3, 7), (2, 8), (3, 9), (2, 63), (3, 64), (2, 65), (3, 257)]:
            args = _args(name, b, n, dtype)
            want = getattr(ref, name)(*args)
            np.testing.assert_allclose(kernel(*args), want, rtol=TOL[t], atol=TOL[t])
            for shift in (1, 3, 6):
                out = _sliced_output(b, n, shift, dtype)
                kernel(*args, y=out)
                np.testing.assert_allclose(out, want, rtol=TOL[t], atol=TOL[t])
                assert np.isnan(out.base[:, :shift]).all()  # nothing written outside
                assert np.isnan(out.base[:, shift + n:]).all()


def test_strided_views_take_the_original_loop(monkeypatch):
    cpu = _compiled(SOURCE.format(t="f32"), True, monkeypatch)
    ref = tdsl.loads(SOURCE.format(t="f32"), target="reference")
    args = _args("chain", 5, 70, np.float32)
    want = ref.chain(*args)
    x = np.zeros((5, 140), np.float32)
    x[:, ::2] = args[0]
    np.testing.assert_allclose(cpu["chain"](x[:, ::2], args[1]), want, rtol=2e-5, atol=2e-5)
    out = np.zeros((5, 140), np.float32)
    cpu["chain"](*args, y=out[:, 1::2])
    np.testing.assert_allclose(out[:, 1::2], want, rtol=2e-5, atol=2e-5)
    assert not out[:, ::2].any()


def test_integer_outputs_stream(monkeypatch):
    cpu = _compiled(INTS, True, monkeypatch)
    ref = tdsl.loads(INTS, target="reference")
    x = RNG.integers(-1000, 1000, (3, 77), dtype=np.int32)
    out = _sliced_output(3, 77, 5, np.float32).view(np.int32)[:, :77]
    want = ref.affine(x, np.int32(7))
    cpu["affine"](x, np.int32(7), y=out)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cpu["affine"](x, np.int32(7)), want)


def test_an_output_larger_than_the_last_level_cache_streams():
    """Without the patch: an output past `min_bytes()` (the threshold the compiled code tests)
    against numpy."""
    n = 1000
    b = tdsl.stream_stores.min_bytes() // (4 * n) + 3
    module = tdsl.loads(SOURCE.format(t="f32"), target="cpu")
    x = RNG.standard_normal((b, n), dtype=np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(module.softmax(x), e / e.sum(axis=1, keepdims=True),
                               rtol=2e-5, atol=1e-7)


NOT_STREAMS = """
kernel heavy(x: f32[B, N]) -> (y: f32[B, N]) {
    y[b, n] = tanh(x[b, n]) * erf(x[b, n])
}
kernel matmul(A: f32[M, K], B: f32[K, N]) -> (C: f32[M, N]) {
    C[m, n] = sum[k](A[m, k] * B[k, n])
}
kernel scaled_and_sums(x: f32[B, N]) -> (y: f32[B, N], s: f32[B]) {
    y[b, n] = 2.0 * x[b, n]
    s[b]    = sum[n](y[b, n])
}
"""


@pytest.mark.parametrize("name", ["matmul", "scaled_and_sums", "heavy"])
def test_outputs_written_again_or_read_back_are_not_streamed(name, monkeypatch):
    """A product's output is zero-filled, then accumulated into once per k; an output read by
    a later statement must stay in cache; a compute-bound pass (`BODY_OPS_MAX`) is left to
    LLVM's vectorizer: none is streamed."""
    program = check_source(NOT_STREAMS, "<no-stream>")
    kernel = next(k for k in program.kernels if k.name == name)
    loops = run_pipeline(kernel, until="loops", keep=["loops"]).ir["loops"]
    assert "nontemporal" not in loops
    cpu = _compiled(NOT_STREAMS, True, monkeypatch)[name]
    ref = getattr(tdsl.loads(NOT_STREAMS, target="reference"), name)
    args = [RNG.standard_normal((37, 70), dtype=np.float32)]
    if name == "matmul":
        args.append(RNG.standard_normal((70, 45), dtype=np.float32))
    got, want = cpu(*args), ref(*args)
    if not isinstance(got, tuple):
        got, want = (got,), (want,)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_one_fence_after_the_streaming_loops():
    program = check_source(SOURCE.format(t="f32"), "<stream>")
    layernorm = program.kernels[1]
    loops = run_pipeline(layernorm, until="loops", keep=["loops"]).ir["loops"]
    assert loops.count("llvm.fence seq_cst") == 1
    assert loops.index("llvm.fence") > loops.rindex("nontemporal")


STENCILS = """
kernel lap2(x: f32[H, W]) -> (y: f32[H - 2, W - 2]) {
    y[i, j] = x[i, j + 1] + x[i + 2, j + 1] + x[i + 1, j] + x[i + 1, j + 2] - 4.0 * x[i + 1, j + 1]
}
kernel lap3(x: f32[D, H, W]) -> (y: f32[D - 2, H - 2, W - 2]) {
    y[i, j, k] = (x[i, j + 1, k + 1] + x[i + 2, j + 1, k + 1] + x[i + 1, j, k + 1]
                + x[i + 1, j + 2, k + 1] + x[i + 1, j + 1, k] + x[i + 1, j + 1, k + 2]
                - 6.0 * x[i + 1, j + 1, k + 1])
}
kernel heads(x: f32[G, B, N]) -> (y: f32[G, B, N]) {
    m[g, b]    = max[n](x[g, b, n])
    e[g, b, n] = exp(x[g, b, n] - m[g, b])
    y[g, b, n] = e[g, b, n] / sum[j](e[g, b, j])
}
"""


def test_shifted_reads_and_3d_rows_stream(monkeypatch):
    """Stencils read the pass's row at lane offsets (`x[i, j + 1]`: vector loads from `lane
    + 1`); `heads` streams the rows of a 3-D output."""
    program = check_source(STENCILS, "<stencils>")
    for kernel in program.kernels:
        loops = run_pipeline(kernel, until="loops", keep=["loops"]).ir["loops"]
        assert "nontemporal = true" in loops, kernel.name
    cpu = _compiled(STENCILS, True, monkeypatch)
    ref = tdsl.loads(STENCILS, target="reference")
    for shape in [(5, 3), (4, 40), (6, 83)]:
        x = RNG.standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(cpu["lap2"](x), ref.lap2(x), rtol=1e-5, atol=1e-5)
    for shape in [(3, 3, 3), (4, 5, 70), (5, 4, 131)]:
        x = RNG.standard_normal(shape, dtype=np.float32)
        want = ref.lap3(x)
        np.testing.assert_allclose(cpu["lap3"](x), want, rtol=1e-5, atol=1e-5)
        wide = np.full(want.shape[:2] + (want.shape[2] + 9,), np.nan, np.float32)
        cpu["lap3"](x, y=wide[:, :, 3:3 + want.shape[2]])
        np.testing.assert_allclose(wide[:, :, 3:3 + want.shape[2]], want, rtol=1e-5, atol=1e-5)
        assert np.isnan(wide[:, :, :3]).all() and np.isnan(wide[:, :, 3 + want.shape[2]:]).all()
    for shape in [(2, 3, 7), (3, 2, 100)]:
        x = RNG.standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(cpu["heads"](x), ref.heads(x), rtol=2e-5, atol=1e-7)
