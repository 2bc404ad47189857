"""Reductions to a scalar split across threads (`tdsl.schedules`, kind "split"): each chunk
of the outermost loop reduces into its own partial, then the partials are combined in order.

Differential tests against the reference target on 1 and 2 threads: integer reductions
exact, float sum / mean close (they may reassociate), max / min exact with nan, float `prod`
ordered (not split: `0 * inf` stays what numpy's ordered product gives), empty domains,
sizes 1, odd sizes, sizes above the work threshold and strided views. The chunks are fixed
when compiling, so 1 and 2 threads give bitwise identical results.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import tdsl
from tdsl.check import check_source
from tdsl.parallel_loops import PARALLEL_WORK
from tdsl.pipelines import run_pipeline
from tdsl.runtime import threads
from tdsl.schedules import plan_schedule

SOURCE = """
kernel fsum(x: f32[N]) -> (s: f32) { s = sum[i](x[i]) }
kernel fmax(x: f32[N]) -> (s: f32) { s = max[i](x[i]) }
kernel fmin(x: f64[N]) -> (s: f64) { s = min[i](x[i]) }
kernel fmean(x: f32[N]) -> (s: f32) { s = mean[i](x[i]) }
kernel fprod(x: f32[N]) -> (s: f32) { s = prod[i](x[i]) }
kernel hsum(x: f16[N]) -> (s: f16) { s = sum[i](x[i]) }
kernel isum(x: i32[N]) -> (s: i32) { s = sum[i](x[i]) }
kernel iprod(x: i64[N]) -> (s: i64) { s = prod[i](x[i]) }
kernel imax(x: i32[N]) -> (s: i32) { s = max[i](x[i]) }
kernel umin(x: u8[N]) -> (s: u8) { s = min[i](x[i]) }
kernel dot(x: f64[N], y: f64[N]) -> (d: f64) { d = sum[i](x[i] * y[i]) }
kernel total2d(x: f32[M, N]) -> (s: f32) { s = sum[i, j](x[i, j]) }
kernel rev(x: i64[N]) -> (s: i64) { s = sum[i: N](x[N - 1 - i] * i64(i)) }
"""

SIZES = [0, 1, 2, 3, 17, 1001, PARALLEL_WORK + 3, 2 * PARALLEL_WORK + 1]
EXACT = {"fmax", "fmin", "isum", "iprod", "imax", "umin", "rev"}
pytestmark = pytest.mark.skipif(not threads.available(), reason="libomp is not installed")


@pytest.fixture(scope="module")
def modules():
    return tdsl.loads(SOURCE, filename="split.tdsl"), \
        tdsl.loads(SOURCE, target="reference", filename="split.tdsl")


@pytest.fixture
def restore_threads():
    yield
    threads.set_num_threads(None)


def _inputs(name: str, n: int, rng) -> list[np.ndarray]:
    if name in ("isum", "imax", "rev"):
        return [rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)
                if name != "rev" else rng.integers(-2**40, 2**40, n)]
    if name == "iprod":
        return [rng.integers(-3, 4, n).astype(np.int64)]  # wraps: exact modulo 2^64
    if name == "umin":
        return [rng.integers(1, 256, n).astype(np.uint8)]
    if name == "total2d":
        return [rng.standard_normal((n // 7 + 1, 7)).astype(np.float32)[: max(n // 7, 0)]]
    if name == "dot":
        return [rng.standard_normal(n), rng.standard_normal(n)]
    if name == "fprod":
        return [rng.uniform(0.999, 1.001, n).astype(np.float32)]
    dtype = {"fmin": np.float64, "hsum": np.float16}.get(name, np.float32)
    return [rng.standard_normal(n).astype(dtype)]


def _check(name: str, got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if name in EXACT:
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    rtol = {"hsum": 2e-2, "fmean": 1e-4}.get(name, 1e-4)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol,
                               atol=rtol * 50, err_msg=name)


@pytest.mark.parametrize("n", SIZES)
def test_against_the_reference_on_one_and_two_threads(modules, restore_threads, n):
    cpu, ref = modules
    rng = np.random.default_rng(n)
    for name in ("fsum", "fmax", "fmin", "fmean", "fprod", "hsum", "isum", "iprod", "imax",
                 "umin", "dot", "total2d", "rev"):
        args = _inputs(name, n, rng)
        if n == 0 and name == "fmean":
            continue  # 0 / 0: nan on both sides, checked below
        want = getattr(ref, name)(*args)
        runs = []
        for t in (1, 2):
            threads.set_num_threads(t)
            runs.append(getattr(cpu, name)(*args))
            _check(name, runs[-1], want)
        np.testing.assert_array_equal(runs[0], runs[1], err_msg=f"{name}: 1 vs 2 threads")


def test_empty_domains_give_the_identity(modules, restore_threads):
    cpu, _ = modules
    threads.set_num_threads(2)
    assert cpu.fsum(np.zeros(0, np.float32)) == 0
    assert cpu.fmax(np.zeros(0, np.float32)) == -np.inf
    assert cpu.fmin(np.zeros(0, np.float64)) == np.inf
    assert cpu.isum(np.zeros(0, np.int32)) == 0
    assert cpu.iprod(np.zeros(0, np.int64)) == 1
    assert cpu.umin(np.zeros(0, np.uint8)) == 255
    assert cpu.total2d(np.zeros((0, 5), np.float32)) == 0
    assert cpu.total2d(np.zeros((5, 0), np.float32)) == 0


@pytest.mark.parametrize("where", [0, 1, PARALLEL_WORK, 2 * PARALLEL_WORK + 2])
def test_nan_in_max_min_and_an_ordered_product(modules, restore_threads, where):
    cpu, _ = modules
    n = 2 * PARALLEL_WORK + 3
    x = np.random.default_rng(where).standard_normal(n).astype(np.float32)
    x[where] = np.nan
    # 2 ** n overflows: in order, a zero at the front gives 0 (0 * 2 * 2 ...), later nan
    # (inf * 0); a regrouped product would give nan (0 * inf) for a zero at the front too.
    p = np.full(n, 2.0, np.float32)
    p[where] = 0.0
    with np.errstate(all="ignore"):
        ordered = np.multiply.accumulate(p)[-1]
    for t in (1, 2):
        threads.set_num_threads(t)
        assert np.isnan(cpu.fmax(x)) and np.isnan(cpu.fmin(x.astype(np.float64)))
        np.testing.assert_array_equal(cpu.fprod(p), ordered)
        clean = np.nan_to_num(x, nan=-np.inf)
        np.testing.assert_array_equal(cpu.fmax(clean), np.max(clean))


def test_strided_and_offset_views(modules, restore_threads):
    cpu, ref = modules
    rng = np.random.default_rng(5)
    big = rng.standard_normal(3 * PARALLEL_WORK + 11).astype(np.float32)
    ints = rng.integers(-1000, 1000, 3 * PARALLEL_WORK + 11).astype(np.int32)
    grid = rng.standard_normal((701, 803)).astype(np.float32)
    for t in (1, 2):
        threads.set_num_threads(t)
        for view in (big[5::3], big[::-2], big[7:-3]):
            _check("fsum", cpu.fsum(view), ref.fsum(view))
            np.testing.assert_array_equal(cpu.fmax(view), np.max(view))
        for view in (ints[1::3], ints[::-1]):
            assert cpu.isum(view) == ref.isum(view)
        _check("total2d", cpu.total2d(grid[1::2, ::3]), ref.total2d(grid[1::2, ::3]))
        _check("total2d", cpu.total2d(grid.T), ref.total2d(grid.T))


# ---- the IR: what is split and what is not -----------------------------------------------


def _fused(name: str) -> str:
    program = check_source(SOURCE, "split.tdsl")
    kernel = next(k for k in program.kernels if k.name == name)
    return run_pipeline(kernel, until="fused", keep=["fused"]).ir["fused"]


@pytest.mark.parametrize("name", ["fsum", "fmax", "fmin", "fmean", "hsum", "isum", "iprod",
                                  "imax", "umin", "dot", "total2d"])
def test_reductions_to_a_scalar_are_split(name):
    ir = _fused(name)
    assert "transform.structured.tile_reduction_using_forall" in ir
    assert "scf.forall" in ir and "linalg.reduce" in ir


@pytest.mark.parametrize("name", ["fprod", "rev"])
def test_not_split(name):
    """A float product stays ordered; a body reading `linalg.index` (x[N - 1 - i]) keeps its
    plain loop (MLIR's partial-reduction tiling does not offset the index)."""
    ir = _fused(name)
    assert "scf.forall" not in ir and "tile_reduction_using_forall" not in ir


def test_rank_one_results_are_not_split():
    program = check_source("kernel colsum(x: f32[M, N]) -> (s: f32[N]) "
                           "{ s[j] = sum[i](x[i, j]) }", "colsum.tdsl")
    ir = run_pipeline(program.kernels[0], until="fused", keep=["fused"]).ir["fused"]
    assert "scf.forall" not in ir


def test_no_split_without_libomp(monkeypatch):
    from mlir import ir as mlir_ir

    from tdsl.pipelines import mlir_context
    from tdsl.to_mlir import func_symbol, kernel_to_mlir

    program = check_source(SOURCE, "split.tdsl")
    kernel = next(k for k in program.kernels if k.name == "fsum")
    text = run_pipeline(kernel_to_mlir(kernel), until="vector-math",
                        keep=["vector-math"], kernel_name="fsum").ir["vector-math"]
    with mlir_context(), mlir_ir.Location.unknown():
        module = mlir_ir.Module.parse(text)
        assert plan_schedule(module, func_symbol("fsum")).kind == "split"
        monkeypatch.setattr(threads, "available", lambda: False)
        assert plan_schedule(module, func_symbol("fsum")) is None


@pytest.mark.skipif(os.environ.get("TDSL_SCHEDULES") == "0", reason="schedules are off")
def test_threshold_guards_the_split_loop():
    program = check_source(SOURCE, "split.tdsl")
    kernel = next(k for k in program.kernels if k.name == "fsum")
    ir = run_pipeline(kernel, until="openmp", keep=["openmp"]).ir["openmp"]
    assert f"arith.constant {PARALLEL_WORK} : index" in ir
    assert "omp.parallel if(" in ir
