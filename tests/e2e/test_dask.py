"""tdsl kernels over dask arrays (`tdsl.dask`): differential tests against the reference
interpreter on uneven chunks (every chunked axis ends with a chunk of one element), on the
threaded scheduler and on a LocalCluster of two worker processes; the reduction split against
the unsplit kernel; validation before any task runs; chunkings the kernel cannot use."""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import tdsl  # noqa: E402
import tdsl.dask as tdd  # noqa: E402
from tdsl.check import check_source  # noqa: E402
from tdsl.codegen.link import find_linker  # noqa: E402
from tdsl.dask_structure import analyze  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
F32 = np.float32
needs_linker = pytest.mark.skipif(find_linker() is None, reason="no linker: no shared library")


def kernel_source(file: str, name: str) -> str:
    """The text of one kernel of a sample file (compiling one kernel, not the whole file,
    keeps these tests fast)."""
    lines = (SAMPLES / file).read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(f"kernel {name}("))
    end = next(n for n in range(start, len(lines)) if lines[n] == "}")
    return "\n".join(lines[start:end + 1]) + "\n"


@functools.cache
def dask_kernel(file: str, name: str, **options) -> tdd.DaskKernel:
    """The dask form of one sample kernel (compiled once per test process)."""
    return tdd.loads(kernel_source(file, name), filename=f"{file}:{name}", **options)[name]


@functools.cache
def reference(file: str, name: str) -> tdsl.Kernel:
    return tdsl.loads(kernel_source(file, name), target="reference")[name]


def uneven(shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Uneven chunks: about half, the rest but one, and a last chunk of one element."""
    return tuple((n,) if n <= 2 else (n // 2, n - n // 2 - 1, 1) for n in shape)


def chunked(*arrays: np.ndarray) -> list:
    return [da.from_array(a, chunks=uneven(a.shape)) if isinstance(a, np.ndarray) and a.ndim
            else a for a in arrays]


def rand(*shape: int, seed: int = 0, dtype=F32) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(dtype)


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def assert_matches(got, want, rtol: float = 2e-5, atol: float = 2e-5) -> None:
    for g, w in zip(as_tuple(got), as_tuple(want), strict=True):
        assert np.shape(g) == np.shape(w)
        assert np.asarray(g).dtype == np.asarray(w).dtype
        np.testing.assert_allclose(np.asarray(g, dtype=np.float64),
                                   np.asarray(w, dtype=np.float64), rtol=rtol, atol=atol)


CASES = {
    "softmax": ("softmax.tdsl", "softmax", lambda: (rand(23, 17),)),
    "softmax_cols": ("softmax.tdsl", "softmax_cols", lambda: (rand(23, 17),)),
    "softmax_temperature": ("softmax.tdsl", "softmax_temperature", lambda: (rand(9, 7), 0.5)),
    "laplacian2d": ("stencil2d.tdsl", "laplacian2d", lambda: (rand(23, 17),)),
    "sobel": ("stencil2d.tdsl", "sobel", lambda: (rand(19, 13),)),
    "filter3x3": ("stencil2d.tdsl", "filter3x3", lambda: (rand(19, 13), rand(3, 3))),
    "diff2": ("diff.tdsl", "diff2", lambda: (rand(31),)),
    "reverse": ("diff.tdsl", "reverse", lambda: (rand(31),)),
    "total": ("total.tdsl", "total", lambda: (rand(101),)),
    "total2d": ("total.tdsl", "total2d", lambda: (rand(23, 17),)),
    "dot": ("total.tdsl", "dot", lambda: (rand(101), rand(101, seed=1))),
    "norm2": ("total.tdsl", "norm2", lambda: (rand(101),)),
    "mean_of": ("total.tdsl", "mean_of", lambda: (rand(101),)),
    "cumsum_rows": ("cumsum.tdsl", "cumsum_rows", lambda: (rand(9, 13),)),
    "moving_sum": ("cumsum.tdsl", "moving_sum", lambda: (rand(41), rand(4))),
    "matmul": ("matmul.tdsl", "matmul", lambda: (rand(13, 9), rand(9, 7))),
    "gemm": ("matmul.tdsl", "gemm",
             lambda: (1.5, rand(7, 5), rand(5, 6), F32(-0.5), rand(7, 6, seed=2))),
    "mean_var": ("multi_output.tdsl", "mean_var", lambda: (rand(23, 17),)),
    "max_argmax": ("multi_output.tdsl", "max_argmax", lambda: (rand(23, 17),)),
    "min_max_mean": ("multi_output.tdsl", "min_max_mean", lambda: (rand(101),)),
    "conv2d": ("conv2d.tdsl", "conv2d", lambda: (rand(3, 4, 11, 9), rand(5, 4, 3, 2))),
    "rmsnorm": ("rmsnorm.tdsl", "rmsnorm", lambda: (rand(11, 9), rand(9))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_on_uneven_chunks(case):
    file, name, make = CASES[case]
    args = make()
    got = dask.compute(*as_tuple(dask_kernel(file, name)(*chunked(*args))),
                       scheduler="threads")
    assert_matches(tuple(got), reference(file, name)(*args))


def test_structure_of_samples():
    def roles(file: str, name: str):
        program = check_source((SAMPLES / file).read_text(), file)
        s = analyze(program.kernel(name))
        halos = {k: tuple(str(-a) for a in v) for k, v in s.windowed.items()}
        return halos, s.split, set(s.reasons)

    assert roles("softmax.tdsl", "softmax") == ({"B": ("0",)}, {}, {"N"})
    assert roles("stencil2d.tdsl", "laplacian2d") == ({"H": ("2",), "W": ("2",)}, {}, set())
    assert roles("total.tdsl", "total") == ({}, {"N": "sum"}, set())
    assert roles("total.tdsl", "mean_of") == ({}, {}, {"N"})
    assert roles("matmul.tdsl", "matmul") == ({"M": ("0",), "N": ("0",)}, {"K": "sum"}, set())
    assert roles("cumsum.tdsl", "moving_sum") == ({"N": ("W - 1",)}, {}, {"W"})
    assert roles("diff.tdsl", "reverse") == ({}, {}, {"N"})
    program = check_source((SAMPLES / "cumsum.tdsl").read_text(), "cumsum.tdsl")
    assert "reduced over by sum[k]" in analyze(program.kernel("cumsum")).reasons["N"]


@pytest.mark.parametrize("case", ["total", "total2d", "dot", "matmul", "conv2d"])
def test_reduction_split_agrees_with_unsplit(case):
    file, name, make = CASES[case]
    args = chunked(*make())
    split = dask_kernel(file, name)
    whole = dask_kernel(file, name, split_reductions=False)
    assert split.plan(*args).split and not whole.plan(*args).split
    got, want = dask.compute(split(*args), whole(*args), scheduler="threads")
    assert_matches(got, want, rtol=1e-5, atol=1e-5)


def test_integer_split_wraps_like_the_kernel():
    source = "kernel isum(x: i32[N]) -> (s: i32) {\n    s = sum[i](x[i])\n}\n"
    x = np.full(37, 2**30, dtype=np.int32)
    got = tdd.loads(source).isum(da.from_array(x, chunks=(10, 10, 16, 1))).compute()
    assert got.dtype == np.int32 and got == tdsl.loads(source).isum(x)


def test_max_split_propagates_nan():
    source = "kernel top(x: f32[N]) -> (m: f32) {\n    m = max[i](x[i])\n}\n"
    x = rand(20)
    x[13] = np.nan
    assert np.isnan(tdd.loads(source).top(da.from_array(x, chunks=5)).compute())


def poisoned(shape, dtype=F32):
    """A dask array whose computation fails: proves that validation ran no task."""
    def boom(block):
        raise AssertionError("a task ran")
    return da.zeros(shape, dtype=dtype, chunks=3).map_blocks(boom, dtype=dtype)


@pytest.mark.parametrize("args", [
    (poisoned((4, 5), np.float64),),
    (poisoned((4,)),),
    (poisoned((4, 5)), poisoned((4, 5))),
    (),
])
def test_validation_messages_match_numpy(args):
    kernel = dask_kernel("softmax.tdsl", "softmax")
    numpy_kernel = reference("softmax.tdsl", "softmax")
    with pytest.raises((TypeError, ValueError)) as dask_error:
        kernel(*args)
    fakes = [np.zeros(a.shape, dtype=a.dtype) for a in args]
    with pytest.raises(dask_error.type) as numpy_error:
        numpy_kernel(*fakes)
    assert str(dask_error.value) == str(numpy_error.value)


def test_symbol_and_scalar_errors_match_numpy():
    kernel, ref = dask_kernel("matmul.tdsl", "gemm"), reference("matmul.tdsl", "gemm")
    a, b, cc = rand(7, 5), rand(4, 6), rand(7, 6)
    cases = [(1.0, a, b, 0.5, cc), ("x", a, rand(5, 6), 0.5, cc), (1.0, a, rand(5, 6), 0.5, a)]
    for args in cases:
        with pytest.raises((TypeError, ValueError)) as numpy_error:
            ref(*args)
        dask_args = [poisoned(x.shape) if isinstance(x, np.ndarray) else x for x in args]
        with pytest.raises(numpy_error.type) as dask_error:
            kernel(*dask_args)
        assert str(dask_error.value) == str(numpy_error.value)


def test_refuses_outputs_and_unknown_chunks():
    kernel = dask_kernel("softmax.tdsl", "softmax")
    x = da.from_array(rand(6, 5), chunks=2)
    with pytest.raises(TypeError, match="outputs cannot be given"):
        kernel(x, y=np.zeros((6, 5), F32))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        kernel(x[x[:, 0] > 0])


def test_large_merge_warns_and_stays_right():
    x = rand(6, 400)
    small = dask_kernel("softmax.tdsl", "softmax", max_block_bytes=1000)
    with pytest.warns(tdd.ChunkingWarning, match=r"one chunk along N: it is reduced over"):
        y = small(da.from_array(x, chunks=(3, 50)))
    assert y.chunks == ((3, 3), (400,))
    assert_matches(y.compute(), reference("softmax.tdsl", "softmax")(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dask_kernel("softmax.tdsl", "softmax")(da.from_array(x, chunks=(3, 50)))


def test_impossible_chunkings_are_refused_without_rechunk():
    strict = dask_kernel("softmax.tdsl", "softmax", allow_rechunk=False)
    with pytest.raises(ValueError, match=r"2 chunks along dimension 1 \(N\).*reduced over"):
        strict(da.from_array(rand(6, 8), chunks=(3, 4)))
    assert strict(da.from_array(rand(6, 8), chunks=(1, 8))).chunks == ((1,) * 6, (8,))
    diff2 = dask_kernel("diff.tdsl", "diff2", allow_rechunk=False)
    with pytest.raises(ValueError, match=r"halo of 2"):
        diff2(da.from_array(rand(10), chunks=(3, 3, 3, 1)))
    assert diff2(da.from_array(rand(10), chunks=(3, 3, 4))).chunks == ((3, 3, 2),)


def test_plan_merges_chunks_smaller_than_the_halo():
    x = da.from_array(rand(31), chunks=(15, 15, 1))
    plan = dask_kernel("diff.tdsl", "diff2").plan(x)
    assert plan.halos == {"N": 2} and plan.chunks["N"] == (15, 16)
    assert dask_kernel("diff.tdsl", "diff2")(x).chunks == ((15, 14),)
    moving = dask_kernel("cumsum.tdsl", "moving_sum")
    assert moving.plan(da.from_array(rand(41), chunks=5), rand(4)).halos == {"N": 3}


def test_numpy_scalars_0d_dask_and_byte_order():
    file, name = "saxpy.tdsl", "saxpy"
    x, y = rand(17), rand(17, seed=3)
    want = reference(file, name)(2.5, x, y)
    kernel = dask_kernel(file, name)
    assert_matches(kernel(da.from_array(np.float32(2.5)), *chunked(x), y).compute(), want)
    swapped = da.from_array(x.astype(">f4"), chunks=5)
    assert_matches(kernel(a=2.5, x=swapped, y=y).compute(), want)


def test_wrap_module_kernel_and_reference_target():
    module = tdsl.load(SAMPLES / "softmax.tdsl", target="reference")
    wrapped = tdd.wrap(module)
    assert isinstance(wrapped, tdd.DaskModule) and wrapped.ref.kind == "source"
    x = rand(9, 7)
    assert_matches(wrapped.softmax(*chunked(x)).compute(), module.softmax(x))
    with pytest.raises(TypeError, match="does not keep its source"):
        tdd.wrap(module.softmax)
    one = tdd.wrap(module.log_softmax, source=SAMPLES / "softmax.tdsl")
    assert_matches(one(*chunked(x)).compute(), module.log_softmax(x))


# ---- generated kernels: whatever the chunking, never a wrong result ----------------------


@st.composite
def chunks_of(draw, n: int) -> tuple[int, ...]:
    """Random chunks of an axis of n, often ending with a chunk of one element."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=3)))
    if draw(st.booleans()):
        cuts = sorted(set(cuts) | {n - 1})
    edges = [0, *cuts, n]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


@st.composite
def generated_kernels(draw) -> str:
    """Index-form kernels over x: f64[M, N] mixing offsets, reversals, index and size values,
    inner reductions and (sometimes) a local read with an offset; or a single reduction."""
    if draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["sum", "max", "min", "prod"]))
        leaf = draw(st.sampled_from(["x[i, j]", "x[i, j] * v[j]", "f64(i) * v[j]",
                                     "x[M - 1 - i, j]", "x[i, j] + f64(N)"]))
        body = f"1.0 + 0.01 * ({leaf})" if op == "prod" else leaf
        return ("kernel k(x: f64[M, N], v: f64[N], w: f64[M], s: f64) -> (y: f64) {\n"
                f"    y = {op}[i: M, j: N]({body})\n}}\n")
    a, b = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    local = a >= 1 and draw(st.booleans())
    leaves = [f"x[i + {p}, j + {q}]" for p in range(a + 1) for q in range(b + 1)]
    leaves += [f"v[j + {b}]", f"w[i + {a}]", "s", "x[M - 1 - i, j]", "v[N - 1 - j]",
               "f64(i)", "f64(j)", "f64(N)", "sum[k](x[i, k])", "max[k](x[k, j])",
               f"sum[r: {a + 1}](x[i + r, j])", f"mean[c: {b + 1}](w[i] * v[j + c])"]
    if local:
        leaves.append(f"t[i + {a - 1}, j]")
    terms = draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=4))
    ops = draw(st.lists(st.sampled_from([" + ", " - ", " * "]), min_size=len(terms) - 1,
                        max_size=len(terms) - 1))
    expr = terms[0] + "".join(o + t for o, t in zip(ops, terms[1:]))
    lines = [f"kernel k(x: f64[M, N], v: f64[N], w: f64[M], s: f64) -> "
             f"(y: f64[M - {a}, N - {b}]) {{"]
    if local:
        lines.append(f"    t[i, j]: f64[M - 1, N - {b}] = x[i + 1, j] - x[i, j + {b}]")
    lines += [f"    y[i, j] = {expr}", "}", ""]
    return "\n".join(lines)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=generated_kernels(), data=st.data())
def test_generated_kernels_never_give_wrong_results(source, data):
    m, n = data.draw(st.integers(4, 12)), data.draw(st.integers(4, 12))
    rng = np.random.default_rng(m * 100 + n)
    x, v, w = rng.standard_normal((m, n)), rng.standard_normal(n), rng.standard_normal(m)
    want = tdsl.loads(source, target="reference").k(x, v, w, 0.5)
    dx = da.from_array(x, chunks=(data.draw(chunks_of(m)), data.draw(chunks_of(n))))
    dv = da.from_array(v, chunks=(data.draw(chunks_of(n)),))
    dw = da.from_array(w, chunks=(data.draw(chunks_of(m)),))
    kernel = tdd.loads(source, target="reference").k
    got = kernel(dx, dv, dw, 0.5).compute(scheduler="threads")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=source)


# ---- a LocalCluster of two worker processes ----------------------------------------------


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@needs_linker
def test_local_cluster(client, tmp_path):
    for case in ("softmax", "laplacian2d", "total", "mean_var"):
        file, name, make = CASES[case]
        args = make()
        got = dask.compute(*as_tuple(dask_kernel(file, name)(*chunked(*args))))
        assert_matches(tuple(got), reference(file, name)(*args))
    loaded = client.run(lambda: sorted(m for m in ("lark", "tdsl.compiler", "tdsl.check")
                                       if m in sys.modules))
    assert len(loaded) == 2 and all(found == [] for found in loaded.values()), loaded
    modules = client.run(lambda: len(sys.modules["tdsl.dask_worker"]._MODULES))
    assert sum(modules.values()) >= 4, modules  # loaded by the workers, once per process
    # an AOT library (tdsl compile -o), read by the workers from its path
    from tdsl.compiler import build_library

    source = kernel_source("diff.tdsl", "diff2")
    library = build_library(check_source(source, "diff.tdsl"), tmp_path / "diff.so")
    aot = tdd.loads(source, filename="diff.tdsl", library=library, ship="path")
    x = rand(31)
    assert_matches(aot.diff2(*chunked(x)).compute(), reference("diff.tdsl", "diff2")(x))
