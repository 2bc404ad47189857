"""The benchmark cases: problem sizes, the bench's own tdsl source, numpy references and
the builders that set up each kernel's implementations (tdsl, numpy, Numba) on their inputs.

`BUILDERS` lists every builder with the names of the cases it makes; `bench/kernels.py` checks,
times and reports them, and `bench/compile.py` times their compiles.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import harness as h
import numpy as np
from numba_impls import EPS5, EPS6, F0, F1, FOUR, GELU_C, GELU_K, HALF, SIX, jitted, njit

# ---- tdsl sources that are not (exactly) in samples/ ----------------------------------------

TDSL_EXTRA = """
fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
}

# RMS normalization followed by the GELU (tanh form) of the result.
kernel rmsnorm_gelu(x: f32[B, N], w: f32[N]) -> (y: f32[B, N]) {
    ms[b]   = mean[n](x[b, n] * x[b, n])
    y[b, n] = gelu(x[b, n] * rsqrt(ms[b] + 1e-6) * w[n])
}

# An element-wise chain of 11 operations over two inputs.
kernel chain(x: f32[M, N], z: f32[M, N]) -> (y: f32[M, N]) {
    y = max(x * z + 0.5 * x - z * z, 0.0) / (1.0 + abs(x)) + sqrt(abs(z))
}

kernel vexp(x: f32[M, N]) -> (y: f32[M, N]) {
    y = exp(x)
}

kernel vtanh(x: f32[M, N]) -> (y: f32[M, N]) {
    y = tanh(x)
}

kernel verf(x: f32[M, N]) -> (y: f32[M, N]) {
    y = erf(x)
}

kernel tanh_sigmoid(x: f32[M, N], y: f32[M, N]) -> (z: f32[M, N]) {
    z = tanh(x) * sigmoid(y) + x * y
}
"""
"""The bench's own tdsl kernels (`extra` in `Case.tdsl`); compile.py reads it from this file
with `ast`, without importing the module."""

EXTRA_FILENAME = "bench/kernel_cases.py"
"""The file name tdsl is given for `TDSL_EXTRA` (in its diagnostics and its modules)."""


# ---- cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    rows: int
    cols: int
    vec: int
    cube: int
    matmul: tuple[int, ...]
    attention: tuple[int, int, int]  # heads, sequence length, head width
    conv: tuple[int, int, int, int, int]  # images, channels, height = width, filters, R = S


FULL = Sizes(4096, 4096, 4096 * 4096, 256, (1024, 2048), (4, 512, 64), (8, 64, 58, 64, 3))
QUICK = Sizes(256, 256, 256 * 256, 32, (128, 256), (2, 64, 32), (2, 8, 18, 8, 3))
TINY = Sizes(4, 8, 16, 4, (8,), (1, 4, 8), (1, 2, 6, 2, 3))


@dataclass
class Case:
    """One kernel at one size: the implementations (zero-argument callables returning the
    result), the reference result, and the work for rates."""

    name: str
    family: str
    size: str
    dtype: str
    nbytes: float
    flops: float | None
    bound: str  # "mem" (rate in GB/s against the bandwidth roof) or "flop"
    impls: dict[str, Callable[[], Any]]
    rtol: float = 1e-5
    atol: float = 1e-6
    ref: Callable[[], Any] | None = None  # default: the numpy implementation's result
    note: str = ""
    tdsl: tuple[str, str] | None = None  # (samples/ file or "extra", kernel name)


_MODULES: dict[str, Any] = {}
LOAD_SECONDS: dict[str, float] = {}


def tdsl_kernel(source: str, name: str) -> Any:
    """Kernel `name` of a sample file (`samples/NAME.tdsl`) or of the bench's own source
    (`extra`), loaded through the disk cache once per run."""
    if source not in _MODULES:
        import tdsl

        t0 = time.perf_counter()
        if source == "extra":
            _MODULES[source] = tdsl.loads(TDSL_EXTRA, filename=EXTRA_FILENAME)
        else:
            _MODULES[source] = tdsl.load(h.SAMPLES / f"{source}.tdsl")
        LOAD_SECONDS[source] = time.perf_counter() - t0
    return _MODULES[source][name]


def seeded_rng() -> np.random.Generator:
    """A generator with a fixed seed, so that every run measures the same inputs."""
    return np.random.default_rng(1234)


def uniform_f32(rng: np.random.Generator, shape: Any, lo: float = -1.0,
                hi: float = 1.0) -> np.ndarray:
    """float32 values drawn uniformly from [lo, hi)."""
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def _add_numba(impls: dict[str, Callable[[], Any]], want: set[str], name: str,
               inputs: tuple[Any, ...], out: np.ndarray | None) -> None:
    """Add the serial and parallel Numba implementations of NUMBA_FUNCS[name], called with
    `inputs` and (when `out` is given) an output array like `out` of their own; they return
    that output, or what the function returns."""
    if njit is None:
        return
    for key, parallel in (("numba", False), ("numba-par", True)):
        if key in want:
            fn = jitted(name, parallel)
            args = inputs if out is None else (*inputs, np.empty_like(out))
            impls[key] = _numba_call(fn, args, out is not None)


def _numba_call(fn: Any, args: tuple[Any, ...], returns_out: bool) -> Callable[[], Any]:
    def call() -> Any:
        r = fn(*args)
        return args[-1] if returns_out else r
    return call


def case_saxpy(sz: Sizes, want: set[str]) -> list[Case]:
    """z = a x + y over a vector."""
    rng = seeded_rng()
    n = sz.vec
    a, x, y = np.float32(1.7), uniform_f32(rng, n), uniform_f32(rng, n)
    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k, zt = tdsl_kernel("saxpy", "saxpy"), np.empty_like(x)
        impls["tdsl"] = lambda: k(a, x, y, z=zt)
    if "numpy" in want:
        zn = np.empty_like(x)

        def numpy_saxpy() -> np.ndarray:
            np.multiply(x, a, out=zn)
            return np.add(zn, y, out=zn)
        impls["numpy"] = numpy_saxpy
    _add_numba(impls, want, "nb_saxpy", (a, x, y), x)
    return [Case("saxpy", "saxpy", f"N={n}", "f32", 12 * n, 2 * n, "mem", impls, 1e-5, 1e-5,
                 tdsl=("saxpy", "saxpy"))]


def case_sum(sz: Sizes, want: set[str]) -> list[Case]:
    """The sum of a vector to a scalar."""
    rng = seeded_rng()
    n = sz.vec
    x = uniform_f32(rng, n, 0.0, 1.0)
    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k = tdsl_kernel("total", "total")
        impls["tdsl"] = lambda: k(x)
    if "numpy" in want:
        impls["numpy"] = lambda: x.sum()
    _add_numba(impls, want, "nb_sum", (x,), None)
    return [Case("sum", "sum", f"N={n}", "f32", 4 * n, n, "mem", impls, 1e-4, 0.0,
                 ref=lambda: x.sum(dtype=np.float64), note="checked against a float64 sum",
                 tdsl=("total", "total"))]


def _rowwise(name: str, sz: Sizes, want: set[str], sample: tuple[str, str],
             numpy_fn: Callable[..., np.ndarray], nb_name: str, inputs: tuple[np.ndarray, ...],
             extra_tdsl: tuple[Any, ...] = (), flops_per: float = 0.0, rtol: float = 1e-4,
             atol: float = 1e-5, note: str = "") -> Case:
    """A kernel from [rows, cols] inputs (plus row vectors) to a [rows, cols] output."""
    x = inputs[0]
    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k = tdsl_kernel(*sample)
        out = np.empty_like(x)
        outname = k.signature.outputs[0].name
        impls["tdsl"] = lambda: k(*inputs, *extra_tdsl, **{outname: out})
    if "numpy" in want:
        out_np = np.empty_like(x)
        impls["numpy"] = lambda: numpy_fn(*inputs, out=out_np)
    _add_numba(impls, want, nb_name, inputs, x)
    nbytes = sum(a.nbytes for a in inputs) + x.nbytes
    return Case(name, name, f"{x.shape[0]}x{x.shape[1]}", "f32", nbytes,
                flops_per * x.size or None, "mem", impls, rtol, atol, note=note, tdsl=sample)


def np_softmax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Row-wise stable softmax in numpy, in place in `out`."""
    np.subtract(x, x.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def np_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """Layer normalization in numpy (eps 1e-5, biased variance)."""
    d = x - x.mean(axis=1, keepdims=True)
    var = np.mean(d * d, axis=1, keepdims=True)
    np.multiply(d, 1.0 / np.sqrt(var + EPS5), out=out)
    out *= gamma
    out += beta
    return out


def np_rmsnorm_gelu(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """RMS normalization then GELU (tanh form) in numpy."""
    ms = np.mean(x * x, axis=1, keepdims=True)
    v = x * (1.0 / np.sqrt(ms + EPS6)) * w
    inner = np.tanh(GELU_C * (v + GELU_K * v * v * v))
    return np.multiply(HALF * v, 1.0 + inner, out=out)


def np_chain(x: np.ndarray, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The element-wise chain in numpy."""
    t = np.maximum(x * z + HALF * x - z * z, F0) / (F1 + np.abs(x))
    return np.add(t, np.sqrt(np.abs(z)), out=out)


def np_tanh_sigmoid(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """tanh(x) sigmoid(y) + x y in numpy."""
    return np.add(np.tanh(x) * (F1 / (F1 + np.exp(-y))), x * y, out=out)


def np_erf(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """erf through scipy.special (numpy has none)."""
    from scipy.special import erf

    return erf(x, out=out)


def case_rowwise(sz: Sizes, want: set[str]) -> list[Case]:
    """Softmax, layernorm and rmsnorm+gelu over rows."""
    rng = seeded_rng()
    shape = (sz.rows, sz.cols)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    gamma, beta = uniform_f32(rng, sz.cols, 0.5, 1.5), uniform_f32(rng, sz.cols)
    return [
        _rowwise("softmax", sz, want, ("softmax", "softmax"), np_softmax, "nb_softmax", (x,),
                 rtol=1e-4, atol=1e-9),
        _rowwise("layernorm", sz, want, ("layernorm", "layernorm"), np_layernorm,
                 "nb_layernorm", (x, gamma, beta)),
        _rowwise("rmsnorm+gelu", sz, want, ("extra", "rmsnorm_gelu"), np_rmsnorm_gelu,
                 "nb_rmsnorm_gelu", (x, gamma)),
    ]


def case_elementwise(sz: Sizes, want: set[str]) -> list[Case]:
    """The 11-op chain, exp, tanh, erf and tanh(x) sigmoid(y) + x y."""
    rng = seeded_rng()
    shape = (sz.rows, sz.cols)
    x, z = uniform_f32(rng, shape, -2, 2), uniform_f32(rng, shape, -2, 2)
    xe = uniform_f32(rng, shape, -10, 10)
    return [
        _rowwise("chain (11 ops)", sz, want, ("extra", "chain"), np_chain, "nb_chain", (x, z),
                 flops_per=11, rtol=1e-5, atol=1e-6),
        _rowwise("exp", sz, want, ("extra", "vexp"), lambda a, out: np.exp(a, out=out),
                 "nb_exp", (xe,), rtol=1e-5, atol=0.0),
        _rowwise("tanh", sz, want, ("extra", "vtanh"), lambda a, out: np.tanh(a, out=out),
                 "nb_tanh", (x,), rtol=1e-5, atol=1e-7),
        _rowwise("erf", sz, want, ("extra", "verf"), np_erf, "nb_erf", (x,), rtol=1e-5,
                 atol=1e-7, note="numpy column: scipy.special.erf"),
        _rowwise("tanh*sigmoid+x*y", sz, want, ("extra", "tanh_sigmoid"), np_tanh_sigmoid,
                 "nb_tanh_sigmoid", (x, z), rtol=1e-5, atol=1e-6),
    ]


def case_stencils(sz: Sizes, want: set[str]) -> list[Case]:
    """The 5-point 2-D and 7-point 3-D Laplacians."""
    rng = seeded_rng()
    cases = []
    x2 = uniform_f32(rng, (sz.rows, sz.cols), 0.0, 1.0)
    x3 = uniform_f32(rng, (sz.cube,) * 3, 0.0, 1.0)

    def np_lap2(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.add(x[:-2, 1:-1], x[2:, 1:-1], out=out)
        out += x[1:-1, :-2]
        out += x[1:-1, 2:]
        out -= FOUR * x[1:-1, 1:-1]
        return out

    def np_lap3(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        c = (slice(1, -1),) * 3
        np.add(x[:-2, 1:-1, 1:-1], x[2:, 1:-1, 1:-1], out=out)
        out += x[1:-1, :-2, 1:-1]
        out += x[1:-1, 2:, 1:-1]
        out += x[1:-1, 1:-1, :-2]
        out += x[1:-1, 1:-1, 2:]
        out -= SIX * x[c]
        return out

    for name, sample, x, np_fn, nb_name, flops_per in (
            ("stencil2d", ("stencil2d", "laplacian2d"), x2, np_lap2, "nb_laplacian2d", 6),
            ("stencil3d", ("stencil3d", "laplacian3d"), x3, np_lap3, "nb_laplacian3d", 8)):
        out_shape = tuple(d - 2 for d in x.shape)
        impls: dict[str, Callable[[], Any]] = {}
        if "tdsl" in want:
            k = tdsl_kernel(*sample)
            out = np.empty(out_shape, np.float32)
            oname = k.signature.outputs[0].name
            impls["tdsl"] = (lambda k=k, x=x, out=out, oname=oname: k(x, **{oname: out}))
        if "numpy" in want:
            out_np = np.empty(out_shape, np.float32)
            impls["numpy"] = lambda np_fn=np_fn, x=x, out_np=out_np: np_fn(x, out_np)
        _add_numba(impls, want, nb_name, (x,), np.empty(out_shape, np.float32))
        n_out = math.prod(out_shape)
        cases.append(Case(name, name, "x".join(map(str, x.shape)), "f32",
                          x.nbytes + 4 * n_out, flops_per * n_out, "mem", impls, 1e-5, 1e-5,
                          tdsl=sample))
    return cases


def case_matmul(sz: Sizes, want: set[str]) -> list[Case]:
    """C = A B, square f32."""
    cases = []
    for n in sz.matmul:
        rng = seeded_rng()
        a, b = uniform_f32(rng, (n, n)), uniform_f32(rng, (n, n))
        impls: dict[str, Callable[[], Any]] = {}
        if "tdsl" in want:
            k, ct = tdsl_kernel("matmul", "matmul"), np.empty((n, n), np.float32)
            impls["tdsl"] = lambda k=k, a=a, b=b, ct=ct: k(a, b, C=ct)
        if "numpy" in want:
            cn = np.empty((n, n), np.float32)
            impls["numpy"] = lambda a=a, b=b, cn=cn: np.matmul(a, b, out=cn)
        _add_numba(impls, want, "nb_matmul", (a, b), a)
        cases.append(Case(f"matmul {n}", "matmul", f"{n}x{n}x{n}", "f32", 3 * a.nbytes,
                          2.0 * n**3, "flop", impls, 1e-4, 1e-3 * math.sqrt(n) / 8,
                          tdsl=("matmul", "matmul")))
    n = sz.matmul[0]  # x @ W.T with W stored [out, in]: B transposed
    rng = seeded_rng()
    a, w = uniform_f32(rng, (n, n)), uniform_f32(rng, (n, n))
    impls = {}
    if "tdsl" in want:
        k, ct = tdsl_kernel("matmul", "matmul_nt"), np.empty((n, n), np.float32)
        impls["tdsl"] = lambda k=k, a=a, w=w, ct=ct: k(a, w, C=ct)
    if "numpy" in want:
        cn = np.empty((n, n), np.float32)
        impls["numpy"] = lambda a=a, w=w, cn=cn: np.matmul(a, w.T, out=cn)
    _add_numba(impls, want, "nb_matmul_nt", (a, w), a)
    cases.append(Case(f"matmul_nt {n}", "matmul", f"{n}x{n}x{n}", "f32", 3 * a.nbytes,
                      2.0 * n**3, "flop", impls, 1e-4, 1e-3 * math.sqrt(n) / 8,
                      tdsl=("matmul", "matmul_nt")))
    return cases


def case_conv(sz: Sizes, want: set[str]) -> list[Case]:
    """A 3x3 convolution layer (samples/conv2d.tdsl: conv2d); numpy's is im2col (a strided
    view) and one BLAS product through `einsum`."""
    n, c, hw, f, r = sz.conv
    rng = seeded_rng()
    x, w = uniform_f32(rng, (n, c, hw, hw)), uniform_f32(rng, (f, c, r, r))
    out_shape = (n, f, hw - r + 1, hw - r + 1)

    def np_conv() -> np.ndarray:
        windows = np.lib.stride_tricks.sliding_window_view(x, (r, r), axis=(2, 3))
        return np.einsum("ncijrs,fcrs->nfij", windows, w, optimize=True)

    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k, out = tdsl_kernel("conv2d", "conv2d"), np.empty(out_shape, np.float32)
        impls["tdsl"] = lambda: k(x, w, out=out)
    if "numpy" in want:
        impls["numpy"] = np_conv
    _add_numba(impls, want, "nb_conv2d", (x, w), np.empty(out_shape, np.float32))
    flops = 2.0 * math.prod(out_shape) * c * r * r
    return [Case("conv2d 3x3", "conv", f"{n}x{c}x{hw}x{hw} F{f}", "f32",
                 x.nbytes + w.nbytes + 4 * math.prod(out_shape), flops, "flop", impls,
                 1e-4, 1e-4 * math.sqrt(c * r * r), tdsl=("conv2d", "conv2d"))]


def case_attention(sz: Sizes, want: set[str]) -> list[Case]:
    """Causal multi-head attention (samples/attention.tdsl: mha_causal)."""
    heads, t, d = sz.attention
    rng = seeded_rng()
    q, k, v = (uniform_f32(rng, (heads, t, d)) for _ in range(3))
    scale = np.float32(1.0 / math.sqrt(d))
    mask = np.triu(np.full((t, t), -np.inf, np.float32), 1)  # 0 on and below the diagonal

    def np_attention(out: np.ndarray) -> np.ndarray:
        s = np.matmul(q, k.transpose(0, 2, 1))
        s *= scale
        s += mask
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        z = s.sum(axis=-1, keepdims=True)
        np.matmul(s, v, out=out)
        out /= z
        return out

    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        kern, ot = tdsl_kernel("attention", "mha_causal"), np.empty_like(q)
        impls["tdsl"] = lambda: kern(q, k, v, o=ot)
    if "numpy" in want:
        on = np.empty_like(q)
        impls["numpy"] = lambda: np_attention(on)
    _add_numba(impls, want, "nb_mha_causal", (q, k, v), q)
    flops = 4.0 * heads * t * t * d
    return [Case("attention causal", "attention", f"H{heads} T{t} D{d}", "f32", 4 * q.nbytes,
                 flops, "flop", impls, 1e-4, 1e-5,
                 note="attention GFLOP/s counts the dense 4 H T^2 D (the mask halves the work)",
                 tdsl=("attention", "mha_causal"))]


BUILDERS: tuple[tuple[tuple[str, ...], Callable[[Sizes, set[str]], list[Case]]], ...] = (
    (("saxpy",), case_saxpy),
    (("sum",), case_sum),
    (("softmax", "layernorm", "rmsnorm+gelu"), case_rowwise),
    (("chain", "exp", "tanh", "erf", "tanh*sigmoid+x*y"), case_elementwise),
    (("stencil2d", "stencil3d"), case_stencils),
    (("matmul",), case_matmul),
    (("conv2d",), case_conv),
    (("attention",), case_attention),
)
"""The case builders and the names of the cases each makes (for `--only`)."""
