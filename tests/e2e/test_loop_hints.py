"""Window accumulations (`tdsl.loop_hints`): a convolution's innermost loop runs along the
output row (`tdsl.to_mlir_generic.loop_order`) in two versions, not interleaved below
`SHORT` iterations; both versions against the reference, on rows just below, at and above
the switch, on 1 and 2 threads, and on strided views."""

from __future__ import annotations

import numpy as np
import pytest

import tdsl
from tdsl.check import check_source
from tdsl.loop_hints import SHORT
from tdsl.pipelines import compile_to_llvm_ir, run_pipeline

SOURCE = """
kernel conv2d(x: f32[N, C, H, W], w: f32[F, C, R, S])
        -> (out: f32[N, F, H - R + 1, W - S + 1]) {
    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s])
}
kernel moving(x: f64[B, L], w: f64[K]) -> (y: f64[B, L - K + 1]) {
    y[b, i] = sum[k](w[k] * x[b, i + k])
}
kernel pool(x: i32[B, L]) -> (y: i32[B, L / 2]) {
    y[b, i] = max[k: 2](x[b, 2 * i + k])
}
kernel col_sum(x: f32[M, N]) -> (y: f32[N]) {
    y[j] = sum[i](x[i, j])
}
"""
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def modules():
    return tdsl.loads(SOURCE, filename="<hints>"), tdsl.loads(SOURCE, target="reference")


def test_only_window_accumulations_get_the_short_version():
    program = check_source(SOURCE, "<hints>")
    for kernel in program.kernels:
        loops = run_pipeline(kernel, until="loops", keep=["loops"]).ir["loops"]
        hinted = loops.count("llvm.loop_annotation = ")
        assert hinted == (0 if kernel.name == "col_sum" else 1), kernel.name
        if hinted:
            assert f"arith.constant {SHORT} : index" in loops
            llvm_ir = compile_to_llvm_ir(kernel)
            assert '!"llvm.loop.interleave.count", i32 1' in llvm_ir, kernel.name


@pytest.mark.parametrize("width", [1, 5, SHORT - 1, SHORT, SHORT + 1, SHORT + 37])
def test_window_rows_of_every_length_against_the_reference(modules, width, on_threads):
    compiled, ref = modules
    x = RNG.uniform(-1, 1, (2, 3, 4, width + 2)).astype(np.float32)
    w = RNG.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    xs = RNG.uniform(-1, 1, (3, width + 6))
    ws = RNG.uniform(-1, 1, 7)
    xi = RNG.integers(-1000, 1000, (3, 2 * width + 1), dtype=np.int32)
    np.testing.assert_allclose(compiled.conv2d(x, w), ref.conv2d(x, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled.moving(xs, ws), ref.moving(xs, ws), rtol=1e-12,
                               atol=1e-13)  # 7 reassociated f64 products of magnitude <= 1
    np.testing.assert_array_equal(compiled.pool(xi), ref.pool(xi))


def test_strided_views(modules):
    compiled, ref = modules
    wide = RNG.uniform(-1, 1, (2, 3, 9, 2 * (SHORT + 9))).astype(np.float32)
    x = wide[:, :, ::2, 3::2]  # no unit stride anywhere
    w = RNG.uniform(-1, 1, (5, 3, 2, 3)).astype(np.float32)
    out = np.full((2, 5, 4, x.shape[3] - 2), np.nan, np.float32)
    compiled.conv2d(x, w, out=out)
    np.testing.assert_allclose(out, ref.conv2d(x, w), rtol=1e-5, atol=1e-5)
