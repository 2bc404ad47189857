"""The direct-convolution schedule (`tdsl.schedule_conv`): which kernels get it, what its
register tile looks like in the IR, and its results against the reference on sizes around the
host's tile (`MR` filters x `NR` columns: full tiles, partial ones, none), 1-D and 2-D, f32 and
f64, 1 and 2 threads, and strided views (the `_any` version)."""

from __future__ import annotations

import numpy as np
import pytest

import tdsl
from tdsl.check import check_source
from tdsl.pipelines import run_pipeline
from tdsl.schedule_contraction import contraction_tiles
from tdsl.schedule_conv import conv_dims
from tdsl.schedule_ir import host, kernel_function, linalg_info, linalg_ops
from tdsl.schedules import plan_schedule
from tdsl.to_mlir import func_symbol

SOURCE = """
kernel conv2d(x: f32[N, C, H, W], w: f32[F, C, R, S])
        -> (out: f32[N, F, H - R + 1, W - S + 1]) {
    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s])
}
kernel conv1d(x: f64[N, C, L], w: f64[F, C, R]) -> (out: f64[N, F, L - R + 1]) {
    out[n, f, i] = sum[c, r](w[f, c, r] * x[n, c, i + r])
}
kernel conv2d_bias(x: f32[N, C, H, W], w: f32[F, C, R, S], b: f32[F])
        -> (out: f32[N, F, H - R + 1, W - S + 1]) {
    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s]) + b[f]
}
kernel depthwise(x: f32[N, C, H, W], w: f32[C, R, S])
        -> (out: f32[N, C, H - R + 1, W - S + 1]) {
    out[n, c, i, j] = sum[r, s](x[n, c, i + r, j + s] * w[c, r, s])
}
kernel nhwc(x: f32[N, H, W, C], w: f32[R, S, C, F])
        -> (out: f32[N, H - R + 1, W - S + 1, F]) {
    out[n, i, j, f] = sum[r, s, c](x[n, i + r, j + s, c] * w[r, s, c, f])
}
kernel matmul(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
    c[i, j] = sum[k](a[i, k] * b[k, j])
}
"""
SCHEDULED = {"conv2d", "conv1d", "conv2d_bias", "nhwc"}
RNG = np.random.default_rng(11)
TILES = contraction_tiles(host(), 32)


@pytest.fixture(scope="module")
def modules():
    return tdsl.loads(SOURCE, filename="<conv>"), tdsl.loads(SOURCE, target="reference")


def _fused(kernel) -> str:
    return run_pipeline(kernel, until="fused", keep=["fused"]).ir["fused"]


@pytest.mark.parametrize("kernel", ["conv2d", "conv1d", "conv2d_bias", "depthwise", "nhwc",
                                    "matmul"])
def test_which_kernels_get_the_conv_schedule(kernel):
    (checked,) = [k for k in check_source(SOURCE, "<conv>").kernels if k.name == kernel]
    from mlir import ir

    from tdsl.pipelines import mlir_context

    text = run_pipeline(checked, until="mlir", keep=["mlir"]).ir["mlir"]
    with mlir_context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        func = kernel_function(module, func_symbol(kernel))
        infos = [linalg_info(op) for op in linalg_ops(func)]
        plan = plan_schedule(module, func_symbol(kernel))
    convs = [conv_dims(i) for i in infos if i is not None]
    assert (plan is not None and plan.kind == "conv") == (kernel in SCHEDULED)
    assert any(d is not None for d in convs) == (kernel in SCHEDULED)


@pytest.mark.parametrize("kernel", sorted(SCHEDULED))
def test_the_register_tile_is_an_outer_product_kept_in_registers(kernel):
    """The bias of conv2d_bias stays a plain loop nest after the convolution's tiles."""
    (checked,) = [k for k in check_source(SOURCE, "<conv>").kernels if k.name == kernel]
    fused = _fused(checked)
    nr = TILES.nr // (2 if kernel == "conv1d" else 1)  # f64: half the lanes per vector
    tile = f"vector<{TILES.mr}x{nr}xf{64 if kernel == 'conv1d' else 32}>"
    assert fused.count("vector.outerproduct") == 3  # full tiles, last columns, last filters
    assert "iter_args" in fused and f"-> ({tile})" in fused  # accumulators carried by loops
    assert "vector.transfer_write" in fused and "tdsl_schedule" in fused


def _conv2d_args(n, c, h, w, f, r, s, dtype=np.float32):
    return (RNG.uniform(-1, 1, (n, c, h, w)).astype(dtype),
            RNG.uniform(-1, 1, (f, c, r, s)).astype(dtype))


# output widths and filter counts around the register tile: none full, one partial, exact,
# one over, several with a remainder
WIDTHS = [1, 5, TILES.nr - 1, TILES.nr, TILES.nr + 1, 2 * TILES.nr + 7]
FILTERS = [1, 3, TILES.mr, TILES.mr + 1, 2 * TILES.mr + 5]


@pytest.mark.parametrize("width", WIDTHS)
def test_conv2d_widths_against_the_reference(modules, width, on_threads):
    compiled, ref = modules
    for f, (r, s) in zip(FILTERS, [(3, 3), (1, 1), (2, 5), (3, 1), (1, 4)]):
        x, w = _conv2d_args(2, 3, r + 2, width + s - 1, f, r, s)
        b = RNG.uniform(-1, 1, f).astype(np.float32)
        np.testing.assert_allclose(compiled.conv2d(x, w), ref.conv2d(x, w), rtol=2e-5,
                                   atol=2e-5, err_msg=f"F={f} R={r} S={s}")
        np.testing.assert_allclose(compiled.conv2d_bias(x, w, b), ref.conv2d_bias(x, w, b),
                                   rtol=2e-5, atol=2e-5, err_msg=f"bias F={f} R={r} S={s}")


def test_conv1d_f64_against_the_reference(modules, on_threads):
    compiled, ref = modules
    for length, f, c, r in [(1, 1, 1, 1), (40, 9, 2, 5), (TILES.nr + 3, 2 * TILES.mr, 4, 3),
                            (301, 17, 3, 7)]:
        x = RNG.uniform(-1, 1, (3, c, length + r - 1))
        w = RNG.uniform(-1, 1, (f, c, r))
        np.testing.assert_allclose(compiled.conv1d(x, w), ref.conv1d(x, w), rtol=1e-12,
                                   atol=1e-12, err_msg=f"L={length} F={f}")


def test_strided_views_and_a_strided_output(modules):
    compiled, ref = modules
    wide = RNG.uniform(-1, 1, (2, 4, 11, 2 * (TILES.nr + 9))).astype(np.float32)
    x = wide[:, :, ::2, 1::2]  # the `_any` version: no unit innermost stride
    w = RNG.uniform(-1, 1, (TILES.mr + 2, 4, 3, 3)).astype(np.float32)
    out = np.full((2, TILES.mr + 2, 4, 2 * x.shape[3] - 4), np.nan, np.float32)[..., ::2]
    compiled.conv2d(x, w, out=out)
    np.testing.assert_allclose(out, ref.conv2d(x, w), rtol=2e-5, atol=2e-5)
    contiguous = np.ascontiguousarray(x)
    np.testing.assert_allclose(compiled.conv2d(contiguous, w), ref.conv2d(x, w), rtol=2e-5,
                               atol=2e-5)


def test_nhwc_against_the_reference(modules, on_threads):
    """Channels last: the tile's rows are output columns (broadcast, stride C) and its vector
    columns the filters."""
    compiled, ref = modules
    for width, f in zip(FILTERS, WIDTHS):  # MR-ish widths, NR-ish filter counts
        for r, s, c in [(3, 3, 2), (1, 2, 1)]:
            x = RNG.uniform(-1, 1, (2, r + 1, width + s - 1, c)).astype(np.float32)
            w = RNG.uniform(-1, 1, (r, s, c, f)).astype(np.float32)
            np.testing.assert_allclose(compiled.nhwc(x, w), ref.nhwc(x, w), rtol=2e-5,
                                       atol=2e-5, err_msg=f"W={width} F={f} R={r} S={s}")


def test_a_depthwise_convolution_keeps_plain_loops_and_agrees(modules):
    compiled, ref = modules
    xd = RNG.uniform(-1, 1, (2, 5, 7, TILES.nr + 5)).astype(np.float32)
    wd = RNG.uniform(-1, 1, (5, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(compiled.depthwise(xd, wd), ref.depthwise(xd, wd), rtol=2e-5,
                               atol=2e-5)
