"""The GPU mapping run by the emulator (`tdsl.runtime.gpu_emulator`) against the references:
every sample case, the hand-built kernels at sizes that need several blocks and several
strided passes of a block reduction, strided (padded) argument layouts, empty sizes, and the
emulator's own checks (bounds, races, uninitialized memory)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import handbuilt_kernels as hk  # noqa: E402
from sample_cases import CASES, tolerance  # noqa: E402

from tdsl import gpu_fusion  # noqa: E402
from tdsl.check import check_source  # noqa: E402
from tdsl.runtime.gpu_emulator import (  # noqa: E402
    EmulatedExecutable,
    EmulatorError,
    Machine,
    MemRef,
    load_program,
)
from tdsl.runtime.inputs import random_inputs  # noqa: E402
from tdsl.runtime.reference import ReferenceExecutable  # noqa: E402
from tdsl.types import DType  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)


@functools.cache
def program(path: str):
    return check_source(Path(path).read_text(), path)


@functools.cache
def emulated(path: str, kernel: str, pad: int = 0, fuse: bool = False) -> EmulatedExecutable:
    """The kernel on the emulator; `fuse` compiles it with row fusion taken at any size."""
    saved = gpu_fusion.FUSE_MIN_ROWS
    gpu_fusion.FUSE_MIN_ROWS = 1 if fuse else saved
    try:
        return EmulatedExecutable(program(path).kernel(kernel), pad=pad)
    finally:
        gpu_fusion.FUSE_MIN_ROWS = saved


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def assert_matches(got, want, rtol=None, atol=None, scale: float = 4.0) -> None:
    """Exact for integers and bools; the case's tolerance (times `scale`, for reductions in
    another order and another exp/log) for floats."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = tolerance(want.dtype)
    if tol is None:
        np.testing.assert_array_equal(got, want)
        return
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                               rtol=(rtol or tol[0]) * scale, atol=(atol or tol[1]) * scale,
                               equal_nan=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sample_case_on_emulator(case):
    ex = emulated(str(case.path), case.kernel)
    inputs = case.make_inputs()
    for got, want in zip(as_tuple(ex(*inputs)), as_tuple(case.expected(*inputs))):
        assert_matches(got, want, case.rtol, case.atol)


FUSED_FILES = ("softmax.tdsl", "layernorm.tdsl", "rmsnorm.tdsl", "logsumexp.tdsl",
               "cross_entropy.tdsl", "multi_output.tdsl", "attention.tdsl", "matmul.tdsl",
               "half.tdsl", "maxpool.tdsl", "cumsum.tdsl", "distance.tdsl", "rope.tdsl",
               "stencil2d.tdsl", "conv2d.tdsl")


@pytest.mark.parametrize("case", [c for c in CASES if c.file in FUSED_FILES],
                         ids=lambda c: c.id)
def test_sample_case_fused_by_rows(case):
    ex = emulated(str(case.path), case.kernel, fuse=True)
    inputs = case.make_inputs()
    for got, want in zip(as_tuple(ex(*inputs)), as_tuple(case.expected(*inputs))):
        assert_matches(got, want, case.rtol, case.atol)


@pytest.mark.parametrize("case", [c for c in CASES if c.file in (
    "softmax.tdsl", "matmul.tdsl", "conv2d.tdsl", "total.tdsl", "broadcast.tdsl",
    "int_ops.tdsl", "multi_output.tdsl")], ids=lambda c: c.id)
def test_sample_case_with_strided_arguments(case):
    ex = emulated(str(case.path), case.kernel, pad=3, fuse=case.kernel == "softmax")
    inputs = case.make_inputs()
    for got, want in zip(as_tuple(ex(*inputs)), as_tuple(case.expected(*inputs))):
        assert_matches(got, want, case.rtol, case.atol)


# ---- hand-built kernels at sizes that need several blocks --------------------------------

F16, BF, F32, F64 = DType.F16, DType.BF16, DType.F32, DType.F64
KERNELS = {
    "saxpy": (hk.saxpy, {"N": 1000}),
    "saxpy_f16": (lambda: hk.saxpy(F16), {"N": 300}),
    "softmax": (hk.softmax, {"B": 5, "N": 700}),
    "softmax_bf16": (lambda: hk.softmax(BF), {"B": 3, "N": 300}),
    "matmul": (hk.matmul, {"M": 19, "K": 33, "N": 41}),
    "matmul_tiles": (hk.matmul, {"M": 130, "K": 21, "N": 70}),
    "matmul_f64": (lambda: hk.matmul(F64), {"M": 9, "K": 300, "N": 5}),
    "conv1d": (hk.conv1d, {"N": 600, "R": 5}),
    "reverse": (hk.reverse, {"N": 777}),
    "causal_mask": (hk.causal_mask, {"N": 23}),
    "int_divmod": (hk.int_divmod, {"N": 300}),
    "int_divmod_i8": (lambda: hk.int_divmod(DType.I8), {"N": 300}),
    "total_sum": (hk.total_sum, {"M": 33, "N": 41}),
    "total_sum_i64": (lambda: hk.total_sum(DType.I64), {"M": 7, "N": 300}),
    "row_stats": (hk.row_stats, {"B": 4, "N": 1000}),
    "symbol_scale": (hk.symbol_scale, {"N": 513}),
    "float_unary": (hk.float_unary, {"N": 300}),
    "float_binary": (hk.float_binary, {"N": 300}),
    "float_binary_bf16": (lambda: hk.float_binary(BF), {"N": 260}),
    "int_ops": (hk.int_ops, {"N": 260}),
    "int_ops_u8": (lambda: hk.int_ops(DType.U8), {"N": 260}),
    "casts": (lambda: hk.casts(F32, (DType.I8, DType.U8, DType.I32, F16, BF, F64,
                                     DType.BOOL)), {"N": 300}),
    "bool_ops": (hk.bool_ops, {"N": 40, "M": 300}),
    "reductions_f32": (lambda: hk.reductions(F32), {"N": 3, "M": 600}),
    "reductions_i8": (lambda: hk.reductions(DType.I8), {"N": 3, "M": 300}),
    "reductions_u8": (lambda: hk.reductions(DType.U8), {"N": 5, "M": 70}),
    "reductions_i64": (lambda: hk.reductions(DType.I64), {"N": 3, "M": 300}),
    "reductions_f16": (lambda: hk.reductions(F16), {"N": 3, "M": 300}),
    "pairwise": (hk.pairwise, {"N": 513}),
    "upsample": (hk.upsample, {"N": 301}),
    "decimate_sum": (hk.decimate_sum, {"N": 1001}),
    "copy": (hk.copy, {"M": 7, "N": 300}),
    "nested_reduction": (hk.nested_reduction, {"M": 300, "N": 9}),
}


def reference(kernel, *inputs) -> tuple:
    """The reference interpreter's outputs."""
    call = kernel.signature.bind(inputs, {})
    call.allocate_outputs()
    ReferenceExecutable(kernel).run(call)
    return as_tuple(call.result())


def reference_tolerance(dtype: np.dtype) -> tuple[float, float] | None:
    tol = tolerance(dtype)
    return None if tol is None else (tol[0] * 20, tol[1] * 20)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_handbuilt_kernel_matches_reference(name):
    build, sizes = KERNELS[name]
    kernel = build()
    inputs = random_inputs(kernel.signature, sizes, seed=7)
    if name.startswith("int_ops"):  # the reference refuses negative integer exponents
        inputs[1] = (np.abs(inputs[1].astype(np.int64)) % 5).astype(inputs[1].dtype)
    got = as_tuple(EmulatedExecutable(kernel)(*inputs))
    want = reference(kernel, *inputs)
    for param, g, w in zip(kernel.signature.outputs, got, want):
        tol = reference_tolerance(np.asarray(w).dtype)
        with np.errstate(all="ignore"):
            if tol is None:
                np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=param.name)
            else:
                np.testing.assert_allclose(np.asarray(g).astype(np.float64),
                                           np.asarray(w).astype(np.float64), rtol=tol[0],
                                           atol=tol[1], equal_nan=True, err_msg=param.name)


def test_fused_rows_with_long_rows_and_many_rows(monkeypatch):
    monkeypatch.setattr(gpu_fusion, "FUSE_MIN_ROWS", 4)
    ex = EmulatedExecutable(hk.softmax())
    x = np.random.default_rng(1).standard_normal((6, 600)).astype(np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(ex(x), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert [launch[1:] for launch in ex.launches] == [((6, 1, 1), (256, 1, 1))]
    y = ex(x[:3])  # fewer rows than FUSE_MIN_ROWS: the unfused launches
    assert len(ex.launches) == 6
    e = e[:3]
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_block_reduction_uses_several_blocks_and_strided_passes():
    ex = EmulatedExecutable(hk.softmax())
    x = np.random.default_rng(0).standard_normal((5, 700)).astype(np.float32)
    y = ex(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    reductions = [(g, b) for name, g, b in ex.launches if g == (5, 1, 1)]
    assert reductions and all(b == (256, 1, 1) for _, b in reductions)  # 700 > 256: strided
    elementwise = [g for name, g, b in ex.launches if b == (256, 1, 1) and g[0] == 14]
    assert elementwise  # 5 * 700 elements in blocks of 256


@pytest.mark.parametrize("name,sizes", [("saxpy", {"N": 0}), ("softmax", {"B": 0, "N": 5}),
                                        ("softmax", {"B": 3, "N": 0}),
                                        ("total_sum", {"M": 0, "N": 4}),
                                        ("matmul", {"M": 3, "K": 0, "N": 2})])
def test_empty_sizes(name, sizes):
    kernel = KERNELS[name][0]()
    inputs = random_inputs(kernel.signature, sizes, seed=1)
    got = as_tuple(EmulatedExecutable(kernel)(*inputs))
    want = reference(kernel, *inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=1e-5, equal_nan=True)


# ---- the emulator's own checks -------------------------------------------------------------

_BROKEN = """
module attributes {{gpu.container_module}} {{
  func.func @host(%x: memref<?xf32>, %y: memref<?xf32>) {{
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c32 = arith.constant 32 : index
    %n = memref.dim %x, %c0 : memref<?xf32>
    gpu.launch_func @m::@k blocks in (%c1, %c1, %c1) threads in (%c32, %c1, %c1)
        args(%x : memref<?xf32>, %y : memref<?xf32>, %n : index)
    return
  }}
  gpu.module @m {{
    gpu.func @k(%x: memref<?xf32>, %y: memref<?xf32>, %n: index) kernel {{
      %t = gpu.thread_id x
      {body}
      gpu.return
    }}
  }}
}}
"""


def _run_broken(body: str, n: int = 32) -> np.ndarray:
    machine = Machine(load_program(_BROKEN.format(body=body)))
    x = MemRef.from_array(np.arange(n, dtype=np.float32))
    y = MemRef.garbage(np.dtype(np.float32), (n,))
    machine.run([x, y])
    return y.view().copy()


def test_emulator_runs_a_correct_kernel():
    y = _run_broken("%v = memref.load %x[%t] : memref<?xf32>\n"
                    "memref.store %v, %y[%t] : memref<?xf32>")
    np.testing.assert_array_equal(y, np.arange(32, dtype=np.float32))


def test_emulator_reports_out_of_bounds():
    with pytest.raises(EmulatorError, match="out of bounds"):
        _run_broken("%v = memref.load %x[%t] : memref<?xf32>\n"
                    "memref.store %v, %y[%t] : memref<?xf32>", n=20)


def test_emulator_reports_store_conflicts():
    with pytest.raises(EmulatorError, match="race"):
        _run_broken("%c0 = arith.constant 0 : index\n%v = memref.load %x[%t] : memref<?xf32>\n"
                    "memref.store %v, %y[%c0] : memref<?xf32>")


def test_emulator_reports_read_after_write_without_barrier():
    with pytest.raises(EmulatorError, match="race"):
        _run_broken("%c1 = arith.constant 1 : index\n%c31 = arith.constant 31 : index\n"
                    "%v = memref.load %x[%t] : memref<?xf32>\n"
                    "memref.store %v, %y[%t] : memref<?xf32>\n"
                    "%u = arith.addi %t, %c1 : index\n%w = arith.minui %u, %c31 : index\n"
                    "%z = memref.load %y[%w] : memref<?xf32>")


def test_unwritten_device_memory_is_garbage():
    y = _run_broken("%c16 = arith.constant 16 : index\n"
                    "%in = arith.cmpi ult, %t, %c16 : index\n"
                    "scf.if %in {\n%v = memref.load %x[%t] : memref<?xf32>\n"
                    "memref.store %v, %y[%t] : memref<?xf32>\n}")
    assert np.isnan(y[16:]).all() and not np.isnan(y[:16]).any()
